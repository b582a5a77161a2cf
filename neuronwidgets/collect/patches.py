"""How many image tokens an index keeps per sample, and each sample's patches in the order the index stores them.

A model with one fixed grid (LLaVA-1.5) keeps its rows * cols patches, row-major. A family whose grid
varies per input (Qwen2-VL, LLaVA-NeXT, Idefics3, ...) keeps as many as the dataset's largest image
needs, each sample's own main grid first (row-major, so its first rows * cols entries reshape to the
grid), then its other image tokens (a base or global overview, crops, newlines), then padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from neuronwidgets.checks import whole_number
from neuronwidgets.model.inputs import load_image

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.model.encoding import Encoded
    from neuronwidgets.model.session import Session


def patch_width(session: Session, samples: Sequence[Sample], max_patches: int | None = None) -> int:
    """The image tokens kept per sample: the fixed grid's; else `max_patches`, or the most any sample of the dataset
    has (every image is read once for its size: the same width for every shard of the dataset, so shards merge)."""
    if session.adapter.fixed_grid:
        rows, cols = session.grid
        return rows * cols
    if max_patches is not None:
        if whole_number(max_patches, "max_patches") < 1:
            raise ValueError(f"max_patches must be at least 1, got {max_patches}")
        return int(max_patches)
    return max(session.adapter.count_image_tokens(load_image(samples[i].get_image())) for i in range(len(samples)))


def sample_patches(session: Session, enc: Encoded, width: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One sample's image-token positions in stored order (main grid row-major first), and its grid (rows, cols)."""
    layout = session.encoder.layout(enc)
    if layout.n_images != 1:
        raise ValueError(f"a collected sample holds one image; this one holds {layout.n_images}")
    order = layout.positions[layout.patch_order()]
    if len(order) > width:
        raise ValueError(f"a sample has {len(order)} image tokens, more than the {width} kept per sample (max_patches): "
                         "pass a larger max_patches, or make the processor's images smaller")
    return order, layout.grids[0]
