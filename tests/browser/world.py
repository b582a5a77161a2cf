"""A small, fully real world for the widget tests: a tiny random LLaVA over the Shapes images,
an index collected over them, concept explanations and scores. Seconds on CPU, no network.

Also the hand-made trace with known activations whose colours the browser tests check.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
from PIL import Image

XSS = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script><!--"

#: token text, activation: the known values the browser tests read colours and tooltips of.
KNOWN = [
    ("USER", 0.0),
    (":", -0.4),
    (" What", 0.25),
    (XSS, 1.0),
    (SCRIPT, 0.55),
    (" shape", -1.0),
    ("\n", 0.95),
]
KNOWN_VMAX = 1.0
#: patch values (2 x 2 grid, row-major) of the image tokens, which sit after "USER" ":" in KNOWN's order.
KNOWN_PATCHES = [0.9, -0.3, 0.0, 0.42]


def known_trace():
    """A Trace by hand: text tokens with KNOWN activations, four image patches, neuron 0 of layer 0.

    Neuron 1 is neuron 0 negated; neurons 2..5 hold small ramps (so each patch has a known
    top-neuron order).
    """
    from neuronwidgets.model.trace import Trace

    text = KNOWN
    tokens = [t for t, _ in text[:2]] + ["<image>"] * 4 + [t for t, _ in text[2:]]
    values = [v for _, v in text[:2]] + KNOWN_PATCHES + [v for _, v in text[2:]]
    n = len(tokens)
    modality = ["text", "text"] + ["image"] * 4 + ["text"] * (n - 6)
    rows = [-1, -1, 0, 0, 1, 1] + [-1] * (n - 6)
    cols = [-1, -1, 0, 1, 0, 1] + [-1] * (n - 6)
    df = pd.DataFrame({
        "position": np.arange(n), "token_id": np.arange(n), "token": tokens, "modality": modality,
        "part": ["prompt" if m == "text" else "image" for m in modality], "row": rows, "col": cols,
    })
    acts = np.zeros((1, n, 6), np.float32)
    acts[0, :, 0] = values
    acts[0, :, 1] = -np.asarray(values, np.float32)
    for j in range(2, 6):
        acts[0, :, j] = 0.1 * j + 0.01 * np.arange(n)
    image = Image.new("RGB", (64, 64), (40, 80, 220))
    image.paste((220, 40, 40), (0, 0, 32, 32))
    return Trace(tokens=df, layers=[0], site="act", grid=(2, 2), n_neurons=6, image=image,
                 prompt="USER: <image>\nWhat shape?", model_name="by-hand", _acts=acts)


@functools.lru_cache(maxsize=2)
def tiny_world(n: int = 24, seed: int = 0):
    """(session, index, data, explanations table): a tiny random LLaVA on 64 px Shapes (4 x 4 patches)."""
    from neuronwidgets.datasets.shapes import SHAPES_WORDS, shapes
    from neuronwidgets.explain import ConceptExplainer, ConceptSimulator, explain_all
    from neuronwidgets.model.session import Session
    from neuronwidgets.toy.build import build_model, build_processor

    words = list(SHAPES_WORDS) + ["red", "shape", "What", "is", "the"]
    processor = build_processor(sorted(set(words)), image_size=64, patch_size=16)
    model = build_model(processor, image_size=64, patch_size=16, text_layers=2, intermediate=32, seed=seed)
    session = Session.from_model(model, processor, name="tiny-shapes")
    data = shapes(n=n, seed=seed)
    index = session.collect(data, top_k=6, random_k=4, text="caption", progress=False, batch_size=8)
    index.attach(data)
    held = shapes(n=12, seed=seed, start=n)
    holdout = session.collect(held, top_k=4, random_k=4, text="caption", progress=False, batch_size=8)
    holdout.attach(held)
    neurons = [(layer, j) for layer in index.layers for j in range(6)]
    table = explain_all(index, neurons=neurons, explainer=ConceptExplainer(data), simulator=ConceptSimulator(holdout),
                        holdout=holdout, progress=False, n_top=4, n_random=4)
    return session, index, data, table
