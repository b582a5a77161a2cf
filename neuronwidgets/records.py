"""Activation records: one input's activations of one neuron, as explainers, scorers and cards see them.

A record is plain data (no model needed): the sample it came from, the neuron's values
on that sample's image patches (a [rows, cols] grid) and on its text tokens. Indexes hand
out records for their top-activating and random samples; traces can be turned into records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

from dataclasses import dataclass, field

import numpy as np


def discretize(values: ArrayLike, max_value: float) -> np.ndarray:
    """The 0-10 scale of OpenAI's neuron-explainer: floor(10 * relu(a) / max), as int.

    The one discretisation used by prompts, cards, heatmaps and exports. A neuron whose
    max is not above 0 gives all zeros.
    """
    values = np.asarray(values, dtype=np.float64)
    top = np.asarray(max_value, dtype=np.float64)  # a scalar, or one max per row (broadcast)
    usable = np.isfinite(top) & (top > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.floor(10.0 * np.maximum(values, 0.0) / np.where(usable, top, 1.0))
    out = np.where(usable, np.nan_to_num(out), 0.0)
    return np.clip(out, 0, 10).astype(np.int64)


@dataclass
class ActivationRecord:
    """One neuron on one input: its patch grid and its text tokens."""

    sample: int  # position of the sample in its dataset
    sample_id: str
    activation: float  # the ranking value: the neuron's largest activation on this input
    patch_map: np.ndarray  # float32 [rows, cols]
    text_tokens: list[str] = field(default_factory=list)
    text_activations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    kind: str = "top"  # "top" | "random"

    def values(self, modality: str) -> np.ndarray:
        """The flat values for 'image' (patches, row-major) or 'text' (tokens)."""
        if modality == "image":
            return np.asarray(self.patch_map, np.float32).ravel()
        if modality == "text":
            return np.asarray(self.text_activations, np.float32)
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
