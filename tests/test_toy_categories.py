"""The paper's categories on the bundled toy: all three occur, and "visual" means something.

Neurons called visual must separate Shapes concept patches (a colour or a shape) far better
than neurons called text: each neuron's best AUROC over the concepts, measured on held-out
images with plain forward passes, compared between the two groups.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neuronwidgets as nw
from neuronwidgets.datasets.shapes import COLORS, SHAPES, shapes
from tests.model.test_toy_model import _auroc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_world():
    session = nw.Session.toy()
    index = session.collect(shapes(n=200, seed=0), top_k=30, random_k=10, text="caption", progress=False)
    held = shapes(n=120, seed=99)
    traces = []
    for start in range(0, len(held), 40):
        part = held[start : start + 40]
        traces += session.trace_batch([s.image for s in part], [s.prompt for s in part])
    return session, index, held, traces


def best_concept_auroc(index, held, traces) -> dict[int, np.ndarray]:
    """Per layer: each neuron's best AUROC over colour and shape concepts, on held-out patches."""
    rows, cols = index.grid
    labels = {c: [] for c in list(COLORS) + list(SHAPES)}
    for s in held:
        masks = s.patch_masks(rows, cols)
        for c in labels:
            labels[c].append(masks[c].reshape(-1) >= 0.15)
    labels = {c: torch.from_numpy(np.concatenate(v)) for c, v in labels.items()}
    out = {}
    for layer in index.layers:
        acts = torch.from_numpy(np.concatenate([t.activations(layer)[t.image_positions] for t in traces]))
        out[layer] = torch.stack([_auroc(acts, pos) for pos in labels.values()]).max(0).values.numpy()
    return out


def test_all_three_categories_occur_and_visual_neurons_see_concepts(toy_world):
    session, index, held, traces = toy_world
    cats = index.categories()  # the paper's rule, its patch minimum scaled to the 4x4 grid
    counts = cats.category.value_counts()
    assert {"visual", "text", "multi-modal"} <= set(counts.index) and min(counts[["visual", "text", "multi-modal"]]) >= 20, counts
    auroc = best_concept_auroc(index, held, traces)
    cats["auroc"] = np.concatenate([auroc[layer] for layer in index.layers])
    visual = cats[cats.category == "visual"]["auroc"]
    text = cats[cats.category == "text"]["auroc"]
    print(f"\nbest concept AUROC, median: visual {visual.median():.3f} (n={len(visual)}), text {text.median():.3f} (n={len(text)})")
    assert visual.median() >= 0.8
    assert visual.median() - text.median() >= 0.15
