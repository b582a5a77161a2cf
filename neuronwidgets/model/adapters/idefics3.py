"""Idefics3 and SmolVLM: an image split into rows x cols tiles (each tagged <row_r_col_c>) and a global view
(<global-img>); a tile's tokens are its pixel-shuffled patches, side x side, row-major."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from neuronwidgets.model.adapters.family import FamilyAdapter
from neuronwidgets.model.adapters.layout import MAIN_VIEW, ImageLayout

_TILE_TAG = re.compile(r"^<row_(\d+)_col_(\d+)>$")
GLOBAL_TAG = "<global-img>"


class Idefics3Adapter(FamilyAdapter):
    family = "Idefics3 / SmolVLM (Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration)"
    model_classes = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    image_placeholder = "<image>"
    default_prompt = "<|im_start|>User:<image>{question}<end_of_utterance>\nAssistant:"
    language_model_attr = "text_model"


    @property
    def side(self) -> int:
        cfg = self.model.config
        patches = int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)
        return patches // int(cfg.scale_factor)

    def _tags(self) -> tuple[dict[int, tuple[int, int]], int | None]:
        if not hasattr(self, "_tag_ids"):
            tok = self.processor.tokenizer
            tiles = {}
            for text, tid in tok.get_vocab().items():
                m = _TILE_TAG.match(text)
                if m:
                    tiles[int(tid)] = (int(m.group(1)) - 1, int(m.group(2)) - 1)
            glob = tok.convert_tokens_to_ids(GLOBAL_TAG)
            self._tag_ids = (tiles, None if glob == tok.unk_token_id else glob)
        return self._tag_ids

    def layout(self, input_ids: Sequence[int], vision: dict[str, torch.Tensor]) -> ImageLayout:
        """Tiles put together into one grid (tile (r, c) covers rows r*side.., cols c*side..) and the global view;
        an image too small to split has only the global view, which is then its grid."""
        ids = np.asarray(input_ids)
        tiles, glob = self._tags()
        side = self.side
        image_id = self.image_token_id
        pos, img, view, row, col = [], [], [], [], []
        views: dict[tuple[int, str], tuple[int, int]] = {}
        image, current, k = -1, None, 0
        after_global = True  # the next tag starts a new image
        extent: dict[int, tuple[int, int]] = {}
        for p, t in enumerate(ids.tolist()):
            if t in tiles:
                if after_global:
                    image, after_global = image + 1, False
                current, k = ("tile", *tiles[t]), 0
            elif t == glob:
                if after_global:  # no tiles before it: a new image
                    image += 1
                after_global = True
                current, k = ("global", 0, 0), 0
            elif t == image_id:
                if current is None:
                    raise ValueError(f"image token at position {p} follows no tile or global tag")
                if k >= side * side:
                    raise ValueError(f"more than {side * side} image tokens after a tag at position {p}")
                kind, tr, tc = current
                r, c = k // side, k % side
                pos.append(p)
                img.append(image)
                if kind == "tile":
                    view.append(MAIN_VIEW)
                    row.append(tr * side + r)
                    col.append(tc * side + c)
                    er, ec = extent.get(image, (0, 0))
                    extent[image] = (max(er, tr + 1), max(ec, tc + 1))
                else:
                    view.append("global")
                    row.append(r)
                    col.append(c)
                k += 1
        img_arr, view_arr = np.asarray(img, np.int64), np.asarray(view, dtype=object)
        for i in range(image + 1):
            if i in extent:
                views[(i, MAIN_VIEW)] = (extent[i][0] * side, extent[i][1] * side)
                views[(i, "global")] = (side, side)
            else:  # not split: the global view is the grid
                view_arr[(img_arr == i) & (view_arr == "global")] = MAIN_VIEW
                views[(i, MAIN_VIEW)] = (side, side)
        return ImageLayout(np.asarray(pos, np.int64), img_arr, view_arr, np.asarray(row, np.int64), np.asarray(col, np.int64), views)
