"""The explain family on a real NeuronIndex (collected from a tiny random LLaVA over Shapes): plumbing, on disk and in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neuronwidgets.datasets.shapes import shapes
from neuronwidgets.explain import ConceptExplainer, ConceptSimulator, Explanation, explain_all, score
from neuronwidgets.index import NeuronIndex

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
