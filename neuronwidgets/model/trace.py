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
    'continuation'), row and col (the patch's place in its image's grid; -1 for text and for
    image tokens outside the grid), image (which of the prompt's images; -1 for text), view,
    view_row and view_col (the token's view of its image and its place there: see ImageLayout).

    `grid` is the first image's (rows, cols); `grids` each image's, where they vary per input
    (Qwen2-VL, LLaVA-NeXT, Idefics3, ...). `crop`: the grid covers the image's centre square
    (LLaVA-1.5), else the whole image.
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
    images: list[Image.Image] | None = None  # several images in one prompt (image is the first)
    grids: list[tuple[int, int]] | None = None  # each image's grid (None: [grid])
    crop: bool = True

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)
        if self.grids is None:
            self.grids = [self.grid]
        self.grids = [tuple(int(g) for g in grid) for grid in self.grids]

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

    def _grid_tokens(self, image: int) -> pd.DataFrame:
        """The tokens on `image`'s main grid."""
        image = whole_number(image, "image")
        if not 0 <= image < len(self.grids):
            raise IndexError(f"image {image} is out of range: this input has {len(self.grids)} image(s)")
        tok = self.tokens
        on_grid = (tok["modality"] == "image") & (tok["row"] >= 0)
        if "image" in tok:
            on_grid &= tok["image"] == image
        return tok[on_grid]

    def image_map(self, layer: int, neuron: int, image: int = 0) -> np.ndarray:
        """One neuron over an image's patches, as its [rows, cols] patch grid (the first image by default)."""
        values = self.neuron(layer, neuron)
        img = self._grid_tokens(image)
        out = np.full(self.grids[image], np.nan, dtype=np.float32)
        out[img["row"].to_numpy(), img["col"].to_numpy()] = values[img.index.to_numpy()]
        return out

    def image_maps(self, layer: int, image: int = 0) -> np.ndarray:
        """All neurons of `layer` over an image's patches: float32 [rows, cols, neurons]."""
        img = self._grid_tokens(image)
        rows, cols = self.grids[image]
        acts = self.activations(layer)
        out = np.full((rows, cols, acts.shape[-1]), np.nan, dtype=np.float32)
        out[img["row"].to_numpy(), img["col"].to_numpy()] = acts[img.index.to_numpy()]
        return out

    def top_neurons(self, layer: int, position: int, k: int = 10) -> pd.DataFrame:
        """The `k` most active neurons of `layer` at one token position."""
        if not 0 <= position < len(self.tokens):
            raise IndexError(f"position {position} is out of range 0..{len(self.tokens) - 1}")
        acts = self.activations(layer)[position]
        order = np.argsort(-acts, kind="stable")[:k]
        return pd.DataFrame({"layer": layer, "neuron": order, "activation": acts[order]})

    def _image_summary(self, n_img: int) -> str:
        return _grid_text(n_img, self.grids)

    def __repr__(self) -> str:
        n_img = int((self.tokens["modality"] == "image").sum())
        return (
            f"<Trace {self.model_name or 'model'} site={self.site!r}: {len(self.tokens)} tokens "
            f"({self._image_summary(n_img)}), "
            f"layers {_ranges(self.layers)}, {self.n_neurons} neurons each>"
        )


def _grid_text(n_img: int, grids: list[tuple[int, int]]) -> str:
    """'576 image patches on a 24x24 grid', or for several images or extra tokens '70 image tokens, grid 6x8'."""
    if len(grids) == 1 and n_img == grids[0][0] * grids[0][1]:
        return f"{n_img} image patches on a {grids[0][0]}x{grids[0][1]} grid"
    return f"{n_img} image tokens, grid{'s' if len(grids) > 1 else ''} {', '.join(f'{r}x{c}' for r, c in grids)}"


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
