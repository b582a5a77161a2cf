"""Trace: one image + prompt run through the model, with every recorded neuron on every token."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from neuronwidgets.checks import whole_number


@dataclass
class Trace:
    """The tokens of one input and the activations of the recorded layers' neurons.

    `tokens` is a DataFrame with one row per sequence position: position, token_id, token
    (its text, shown faithfully), modality ('image' | 'text'), part ('image' | 'prompt' |
    'continuation'), row and col (the patch's place in the grid; -1 for text).
    """

    tokens: pd.DataFrame
    layers: list[int]
    site: str
    grid: tuple[int, int]
    n_neurons: int
    image: Image.Image | None = None
    prompt: str = ""
    continuation: str | None = None
    model_name: str = ""
    _acts: np.ndarray = field(default=None, repr=False)  # [len(layers), tokens, neurons] float32

    # --- lookups ---------------------------------------------------------------
    def _layer_slot(self, layer: int) -> int:
        layer = whole_number(layer, "layer")
        if layer not in self.layers:
            raise IndexError(
                f"layer {layer} was not recorded in this trace; recorded layers: {_ranges(self.layers)}. "
                "Pass layers=[...] to session.trace to record others."
            )
        return self.layers.index(layer)

    def _check_neuron(self, neuron: int) -> int:
        neuron = whole_number(neuron, "neuron")
        if not 0 <= neuron < self.n_neurons:
            raise IndexError(f"neuron {neuron} is out of range: this model has neurons 0..{self.n_neurons - 1} per layer")
        return neuron

    def activations(self, layer: int) -> np.ndarray:
        """All neurons of `layer` on all tokens: float32 [tokens, neurons]."""
        return self._acts[self._layer_slot(layer)]

    def neuron(self, layer: int, neuron: int) -> np.ndarray:
        """One neuron over all tokens: float32 [tokens]."""
        return self.activations(layer)[:, self._check_neuron(neuron)]

    @property
    def image_positions(self) -> np.ndarray:
        return self.tokens.index[self.tokens["modality"] == "image"].to_numpy()

    @property
    def text_positions(self) -> np.ndarray:
        return self.tokens.index[self.tokens["modality"] == "text"].to_numpy()

    def image_map(self, layer: int, neuron: int) -> np.ndarray:
        """One neuron over the image patches, as the [rows, cols] patch grid."""
        values = self.neuron(layer, neuron)
        img = self.tokens[self.tokens["modality"] == "image"]
        out = np.full(self.grid, np.nan, dtype=np.float32)
        out[img["row"].to_numpy(), img["col"].to_numpy()] = values[img.index.to_numpy()]
        return out

    def image_maps(self, layer: int) -> np.ndarray:
        """All neurons of `layer` over the patches: float32 [rows, cols, neurons]."""
        acts = self.activations(layer)[self.image_positions]
        return acts.reshape(*self.grid, acts.shape[-1])

    def top_neurons(self, layer: int, position: int, k: int = 10) -> pd.DataFrame:
        """The `k` most active neurons of `layer` at one token position."""
        if not 0 <= position < len(self.tokens):
            raise IndexError(f"position {position} is out of range 0..{len(self.tokens) - 1}")
        acts = self.activations(layer)[position]
        order = np.argsort(-acts, kind="stable")[:k]
        return pd.DataFrame({"layer": layer, "neuron": order, "activation": acts[order]})

    def __repr__(self) -> str:
        n_img = int((self.tokens["modality"] == "image").sum())
        return (
            f"<Trace {self.model_name or 'model'} site={self.site!r}: {len(self.tokens)} tokens "
            f"({n_img} image patches on a {self.grid[0]}x{self.grid[1]} grid), "
            f"layers {_ranges(self.layers)}, {self.n_neurons} neurons each>"
        )


def _ranges(values: list[int]) -> str:
    """[0,1,2,5] -> '0-2, 5'."""
    out, start, prev = [], None, None
    for v in sorted(values):
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(out) or "none"
