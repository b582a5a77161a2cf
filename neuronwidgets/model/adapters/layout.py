"""Where an input's image tokens are: for each, its image, its view of that image, and its (row, col) there.

A view is one grid of tokens over an image. Every image has a main view, "grid", that covers the
whole image at the finest resolution the model reads (LLaVA-1.5's 24x24; Qwen2-VL's merged patches;
LLaVA-NeXT's and Idefics3's tiles put together; Gemma 3's pooled 16x16). Some families add a coarse
overview ("base": LLaVA-NeXT / OneVision; "global": Idefics3 / SmolVLM), crops ("crop1", ...:
Gemma 3's pan and scan) or tokens with no place in a grid ("newline": LLaVA-NeXT's row ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The view that covers the whole image at the finest resolution: the one heatmaps and the index show.
MAIN_VIEW = "grid"
#: Image tokens with no place in any grid.
NEWLINE = "newline"


@dataclass
class ImageLayout:
    """Per image token, in sequence order: its position, image, view, row and col (-1 where it has none)."""

    positions: np.ndarray  # int64 [P]: sequence positions of the image tokens
    image: np.ndarray  # int64 [P]: which of the prompt's images (0, 1, ...)
    view: np.ndarray  # object [P]: "grid", "base", "global", "crop1", ..., "newline"
    row: np.ndarray  # int64 [P]: row in its view (-1 for a newline)
    col: np.ndarray  # int64 [P]: col in its view (-1 for a newline)
    views: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # (image, view) -> (rows, cols)

    def __post_init__(self):
        n = len(self.positions)
        for name in ("image", "view", "row", "col"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"ImageLayout.{name} has {len(getattr(self, name))} entries for {n} image tokens")
        for image in np.unique(self.image):
            rows, cols = self.views.get((int(image), MAIN_VIEW), (0, 0))
            main = (self.image == image) & (self.view == MAIN_VIEW)
            if int(main.sum()) != rows * cols:
                raise ValueError(f"image {int(image)}'s main grid is {rows}x{cols} but {int(main.sum())} tokens are placed on it")

    @property
    def n_images(self) -> int:
        return int(self.image.max()) + 1 if len(self.image) else 0

    @property
    def grids(self) -> list[tuple[int, int]]:
        """(rows, cols) of each image's main grid."""
        return [self.views[(i, MAIN_VIEW)] for i in range(self.n_images)]

    def main_order(self, image: int = 0) -> np.ndarray:
        """Indices (into `positions`) of `image`'s main-grid tokens, row-major: rows * cols of them."""
        rows, cols = self.views[(image, MAIN_VIEW)]
        idx = np.flatnonzero((self.image == image) & (self.view == MAIN_VIEW))
        order = np.empty(rows * cols, np.int64)
        order[self.row[idx] * cols + self.col[idx]] = idx
        return order

    def patch_order(self) -> np.ndarray:
        """All image tokens (indices into `positions`): image 0's main grid first, row-major, then the rest in
        sequence order. The order an index stores a sample's patches in: its first rows * cols are the grid."""
        first = self.main_order(0) if self.n_images else np.zeros(0, np.int64)
        rest = np.setdiff1d(np.arange(len(self.positions)), first, assume_unique=True)
        return np.concatenate([first, rest])


def one_grid(positions: np.ndarray, rows: int, cols: int, image: int = 0) -> ImageLayout:
    """`rows * cols` image tokens that fill one image's main grid in row-major order (LLaVA-1.5, Qwen2-VL, Gemma 3)."""
    positions = np.asarray(positions, np.int64)
    if len(positions) != rows * cols:
        raise ValueError(f"expected {rows * cols} image tokens for a {rows}x{cols} grid, found {len(positions)}")
    k = np.arange(rows * cols)
    return ImageLayout(positions, np.full(len(k), image), np.full(len(k), MAIN_VIEW, dtype=object), k // cols, k % cols,
                       {(image, MAIN_VIEW): (rows, cols)})


def concat(layouts: list[ImageLayout]) -> ImageLayout:
    """Several images' layouts as one (their image numbers kept)."""
    if not layouts:
        empty = np.zeros(0, np.int64)
        return ImageLayout(empty, empty, np.zeros(0, dtype=object), empty, empty)
    views = {}
    for lay in layouts:
        views.update(lay.views)
    return ImageLayout(*(np.concatenate([getattr(lay, name) for lay in layouts]) for name in ("positions", "image", "view", "row", "col")),
                       views=views)


def runs(mask: np.ndarray) -> list[np.ndarray]:
    """The runs of consecutive True positions in a boolean array, each as an array of positions."""
    pos = np.flatnonzero(mask)
    if not len(pos):
        return []
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    return np.split(pos, breaks)
