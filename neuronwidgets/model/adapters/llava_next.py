"""LLaVA-NeXT (anyres tiles) and LLaVA-OneVision: a base view of the whole image, then the tiles' unpadded grid,
each of its rows ended by an image_newline token."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from neuronwidgets.constants import PROMPT_TEMPLATE
from neuronwidgets.model.adapters.family import FamilyAdapter
from neuronwidgets.model.adapters.layout import MAIN_VIEW, NEWLINE, ImageLayout, concat, one_grid, runs


def best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """transformers' select_best_resolution: the pinpoint that keeps the most of the image, then wastes the least."""
    from transformers.image_processing_utils import select_best_resolution

    return tuple(int(x) for x in select_best_resolution([int(height), int(width)], [list(p) for p in pinpoints]))


def anyres_grid(height: int, width: int, pinpoints: Sequence[Sequence[int]], tile: int, side: int,
                max_tiles: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the hi-res grid of an image of `height` x `width`: the best pinpoint's tiles put together
    (side x side features each), the padding the resize added cut off, and for OneVision shrunk to about
    `max_tiles` tiles' worth (as the model's pack_image_features does)."""
    best_h, best_w = best_resolution(height, width, pinpoints)
    rows, cols = side * (best_h // tile), side * (best_w // tile)
    if width / height > cols / rows:
        new_rows = int(round(height * (cols / width), 7))
        rows -= 2 * ((rows - new_rows) // 2)
    else:
        new_cols = int(round(width * (rows / height), 7))
        cols -= 2 * ((cols - new_cols) // 2)
    if max_tiles is not None:
        ratio = math.sqrt(rows * cols / (max_tiles * side**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols


class LlavaNextAdapter(FamilyAdapter):
    family = "LLaVA-NeXT (LlavaNextForConditionalGeneration)"
    image_placeholder = "<image>"
    default_prompt = PROMPT_TEMPLATE  # Vicuna-style, as LLaVA-1.5
    model_classes = ("LlavaNextForConditionalGeneration",)


    @property
    def side(self) -> int:
        v = self.model.config.vision_config
        return int(v.image_size) // int(v.patch_size)

    def max_tiles(self) -> int | None:
        return None

    def layout(self, input_ids: Sequence[int], vision: dict[str, torch.Tensor]) -> ImageLayout:
        """Per image: the base view (side x side, "base"), then the hi-res grid ("grid") row by row, each row followed
        by a "newline" token. An image read without tiles (OneVision's several images per prompt): its base view is
        its grid, and one newline follows it."""
        ids = np.asarray(input_ids)
        sizes = vision["image_sizes"].tolist()
        positions = np.concatenate(runs(ids == self.image_token_id) or [np.zeros(0, np.int64)])
        cfg = self.model.config
        side = self.side
        tiled = self._tiled(vision, len(sizes))
        out, start = [], 0
        for image, ((height, width), with_tiles) in enumerate(zip(sizes, tiled)):
            if not with_tiles:
                n = side * side
                base = one_grid(positions[start : start + n], side, side, image)
                nl = positions[start + n : start + n + 1]
                out += [base, ImageLayout(nl, np.full(1, image), np.full(1, NEWLINE, dtype=object), np.full(1, -1), np.full(1, -1))]
                start += n + 1
                continue
            rows, cols = anyres_grid(height, width, cfg.image_grid_pinpoints, cfg.vision_config.image_size, side, self.max_tiles())
            n = side * side + rows * (cols + 1)
            pos = positions[start : start + n]
            if len(pos) != n:
                raise ValueError(f"image {image} ({height}x{width}) should have {n} image tokens ({side}x{side} base + {rows}x{cols} "
                                 f"grid + {rows} newlines), the input holds {len(pos)}")
            k = np.arange(side * side)
            base = ImageLayout(pos[: side * side], np.full(side * side, image), np.full(side * side, "base", dtype=object),
                               k // side, k % side, {(image, "base"): (side, side)})
            j = np.arange(rows * (cols + 1))
            r, c = j // (cols + 1), j % (cols + 1)
            is_nl = c == cols
            hires = ImageLayout(pos[side * side :], np.full(len(j), image), np.where(is_nl, NEWLINE, MAIN_VIEW).astype(object),
                                np.where(is_nl, -1, r), np.where(is_nl, -1, c), {(image, MAIN_VIEW): (rows, cols)})
            out += [base, hires]
            start += n
        if start != len(positions):
            raise ValueError(f"the layout places {start} image tokens, the input holds {len(positions)}")
        return concat(out)

    def _tiled(self, vision: dict[str, torch.Tensor], n_images: int) -> list[bool]:
        return [True] * n_images


class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "LLaVA-OneVision (LlavaOnevisionForConditionalGeneration)"
    default_prompt = "<|im_start|>user <image>\n{question}<|im_end|><|im_start|>assistant\n"
    model_classes = ("LlavaOnevisionForConditionalGeneration",)

    def max_tiles(self) -> int | None:
        return int(str(self.model.config.vision_aspect_ratio).replace("anyres_max_", ""))

    def _tiled(self, vision: dict[str, torch.Tensor], n_images: int) -> list[bool]:
        counts = vision.get("batch_num_images")
        return [n_images == 1] * n_images if counts is None else [int(counts.sum()) == 1] * n_images
