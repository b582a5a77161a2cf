"""The explain family on a real NeuronIndex (collected from a tiny random LLaVA over Shapes): plumbing, on disk and in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuronwidgets.datasets.shapes import shapes
from neuronwidgets.explain import (
    ConceptExplainer,
    ConceptSimulator,
    Explanation,
    explain_all,
    score,
)
from neuronwidgets.store.index import NeuronIndex

KW = dict(top_k=8, random_k=6, batch_size=16, text="caption", progress=False, max_text_tokens=12)


@pytest.fixture(scope="module")
def indexes(tiny_session, tmp_path_factory):
    data = shapes(n=36, seed=0)
    path = tmp_path_factory.mktemp("idx") / "train"
    index = tiny_session.collect(data[:24], path=path, **KW)
    heldout = tiny_session.collect(data[24:], **KW)
    return data, index, heldout


def _busiest_visual(index):
    cats = index.categories()
    vis = cats[cats["category"] == "visual"].sort_values(["max", "neuron"], ascending=[False, True])
    assert len(vis), "the tiny model has no visual neuron"
    return int(vis["layer"].iloc[0]), int(vis["neuron"].iloc[0])


def test_concept_family_on_a_real_index(indexes):
    data, index, heldout = indexes
    layer, neuron = _busiest_visual(index)
    exp = ConceptExplainer(data).explain(index, layer, neuron)
    assert exp.category == "visual" and exp.concept and 0 <= exp.extra["iou"] <= 1
    assert set(exp.exemplars) <= set(index.samples["sample_id"])
    # ConceptExplainer without a dataset uses the index's own (rebuilt from its manifest after load).
    again = ConceptExplainer().explain(NeuronIndex.load(index.path), layer, neuron)
    assert again.concept == exp.concept
    result = score(exp, index, simulator=ConceptSimulator(heldout), holdout=heldout)
    assert result.modality == "image" and result.n_unparsed == 0
    assert set(result.per_input["sample_id"]) <= {s.id for s in data[24:]}
    assert result.baseline_explanation is not None and result.baseline_explanation.neuron != neuron
    assert np.isfinite(result.score) or result.per_input["simulated"].map(np.ptp).eq(0).all()
    rec = heldout.records(layer, neuron)[0]
    assert result.per_input["real"].iloc[0].shape == (rec.patch_map.size,)


def test_explain_all_table_is_read_by_the_index(indexes):
    data, index, heldout = indexes
    layer, neuron = _busiest_visual(index)
    cats = index.categories()
    some = cats[(cats["layer"] == layer) & (cats["category"] == "visual")].head(4)
    table = explain_all(index, neurons=some, simulator=ConceptSimulator(heldout), holdout=heldout, progress=False)
    assert len(table) == len(some) and table["error"].isna().all()
    saved = index.explanations()
    assert isinstance(saved, pd.DataFrame) and len(saved) == len(some)
    exp = Explanation.from_row(saved.iloc[0].to_dict())
    assert exp.explainer == "concept" and exp.layer == layer


def test_bad_arguments_are_clear_errors_not_odd_results(indexes):
    data, index, heldout = indexes
    for kw, message in (({"max_terms": 0}, "max_terms and beam"), ({"beam": 0}, "max_terms and beam"),
                        ({"ops": ("XOR",)}, "'AND' and 'OR' only")):
        with pytest.raises(ValueError, match=message):
            ConceptExplainer(data, **kw)
    assert ConceptExplainer(data, ops="and").ops == ("AND",)  # one op as a string, not its letters
    with pytest.raises(ValueError, match="modality must be 'image' or 'text'"):
        index.exemplars(0, 0, modality="images")
    with pytest.raises(ValueError, match="0 or more"):
        index.exemplars(0, 0, k=-2)
    assert index.exemplars(0, 0, k=0).empty and len(index.exemplars(0, 0, k=2)) == 2
    for top_n in (-1, 0):
        with pytest.raises(ValueError, match="1 or more"):
            index.categories(top_n=top_n)
    with pytest.raises(TypeError, match="whole number"):
        index.categories(top_n=2.5)


def test_an_inactive_explanation_paints_nothing_and_scores_nan(indexes):
    """Its text names no concept: read as one ('above' in 'never activates above 0') it scored a neuron that never fires."""
    data, index, heldout = indexes
    exp = Explanation(layer=0, neuron=0, category="inactive", text="inactive (never activates above 0)", explainer="concept")
    sim = ConceptSimulator(heldout)
    assert sim.formula(exp, {"above", "red"}) is None
    assert np.isnan(score(exp, heldout, simulator=sim, holdout=heldout, baseline=False).score)


def test_an_index_without_maps_says_so_to_the_concept_explainer(tiny_session, indexes):
    data = indexes[0]
    bare = tiny_session.collect(data[:8], **{**KW, "map_k": 0, "random_k": 0})
    layer, neuron = _busiest_visual(indexes[1])
    with pytest.raises(ValueError, match="keeps no maps.*map_k"):
        ConceptExplainer(data).explain(bare, layer, neuron, category="visual")


def test_a_copy_of_the_index_is_no_hold_out_and_another_slice_is_scored_again(tiny_session, indexes, tmp_path):
    import shutil

    data, index, heldout = indexes
    copy = tmp_path / "copy"
    shutil.copytree(index.path, copy)
    explainer, neurons = ConceptExplainer(data), [_busiest_visual(index)]
    with pytest.raises(ValueError, match="holds 24 of the index's own samples"):
        explain_all(index, neurons=neurons, explainer=explainer, simulator=ConceptSimulator(data), holdout=NeuronIndex.load(copy),
                    path=tmp_path / "t.parquet", progress=False)
    first_half = tiny_session.collect(data, indices=range(24, 30), **KW)
    second_half = tiny_session.collect(data, indices=range(30, 36), **KW)  # the same dataset, other samples
    kw = dict(neurons=neurons, explainer=explainer, simulator=ConceptSimulator(data), path=tmp_path / "t.parquet", progress=False)
    a = explain_all(index, holdout=first_half, **kw)
    b = explain_all(index, holdout=second_half, **kw)
    assert a["held_out"].iloc[0] != b["held_out"].iloc[0]
    assert set(b["held_out"]) == {explain_all(index, holdout=second_half, **kw)["held_out"].iloc[0]}


def test_scores_tagged_before_positions_were_named_are_kept(tiny_session, indexes, tmp_path):
    """A table from the version before: its held_out tag names the dataset and size alone; it is not scored again."""
    data, index, heldout = indexes
    kw = dict(neurons=[_busiest_visual(index)], explainer=ConceptExplainer(data), simulator=ConceptSimulator(data),
              path=tmp_path / "t.parquet", progress=False)
    first = explain_all(index, holdout=heldout, **kw)
    old_tag = first["held_out"].iloc[0].rsplit(":", 1)[0]
    pd.DataFrame(first.assign(held_out=old_tag)).to_parquet(tmp_path / "t.parquet", index=False)
    assert explain_all(index, holdout=heldout, **kw)["held_out"].iloc[0] == old_tag
