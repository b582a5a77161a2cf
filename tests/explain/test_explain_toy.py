"""End to end on the bundled toy LLaVA, offline: a colour neuron is explained by its colour, and the score shows it."""

from __future__ import annotations

import pytest

import neuronwidgets as nw
from neuronwidgets.explain import ConceptExplainer, ConceptSimulator, score

pytestmark = [pytest.mark.slow]
N_TRAIN, N_HELD = 160, 80


@pytest.fixture(scope="module")
def toy():
    from neuronwidgets.datasets.shapes import COLORS, shapes

    session = nw.Session.toy()
    data = shapes(n=N_TRAIN + N_HELD, seed=0)
    kw = dict(top_k=30, random_k=20, text="caption", progress=False)
    index = session.collect(data[:N_TRAIN], **kw)
    heldout = session.collect(data[N_TRAIN:], **kw)
    return data, index, heldout, set(COLORS)


def _colour_neuron(data, index, colours):
    """The neuron whose concept explanation on image patches is one colour, with the highest IoU (then the strongest).

    Candidates are the neurons whose largest activation is on an image patch, explained as
    visual neurons (a colour neuron fires on the one patch its shape covers).
    """
    stats = index.stats()
    cands = stats[(stats["image_max"] > 0) & (stats["image_max"] >= stats["text_max"])]
    explainer = ConceptExplainer(data[:N_TRAIN])
    found = []
    for layer, neuron, peak in cands[["layer", "neuron", "image_max"]].itertuples(index=False):
        exp = explainer.explain(index, int(layer), int(neuron), category="visual")
        if exp.concept in colours:
            found.append((-exp.extra["iou"], -float(peak), int(layer), int(neuron), exp))
    assert found, "no neuron of the toy is explained by a colour"
    return min(found, key=lambda x: x[:4])[-1]


def test_colour_neuron_is_explained_by_its_colour_and_scores(toy):
    data, index, heldout, colours = toy
    exp = _colour_neuron(data, index, colours)
    assert exp.concept in colours and exp.text == exp.concept and exp.extra["iou"] >= 0.5
    result = score(exp, index, simulator=ConceptSimulator(heldout), holdout=heldout)
    print(f"\n{exp} (IoU {exp.extra['iou']:.3f}): {result}; baseline: {result.baseline_explanation}")
    assert result.modality == "image" and result.n_unparsed == 0
    assert result.score >= 0.7
    assert result.baseline_explanation is not None and result.baseline_explanation.neuron != exp.neuron
    assert result.baseline <= 0.2
