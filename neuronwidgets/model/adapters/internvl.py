"""InternVL (InternVL3 / InternVL3.5 in transformers' HF format): an image resized onto a canvas of cols x rows tiles
(GOT-OCR2's dynamic tiling, up to max_patches), each tile pixel-shuffled to side x side tokens, plus a thumbnail of the
whole image when there is more than one tile; all of them between <img> and </img>, with no tags between tiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from neuronwidgets.model.adapters.family import FamilyAdapter
from neuronwidgets.model.adapters.layout import MAIN_VIEW, ImageLayout

#: The view of InternVL's thumbnail: the whole image at one tile's resolution, after the tiles.
THUMBNAIL = "thumbnail"


class InternVLAdapter(FamilyAdapter):
    family = "InternVL (InternVLForConditionalGeneration)"
    model_classes = ("InternVLForConditionalGeneration",)
    image_placeholder = "<IMG_CONTEXT>"
    default_prompt = "<|im_start|>user\n<IMG_CONTEXT>\n{question}<|im_end|>\n<|im_start|>assistant\n"


    @property
    def side(self) -> int:
        """Tokens along one side of a tile: (image_size / patch_size) patches, pixel-shuffled by downsample_ratio."""
        cfg = self.model.config
        size, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        return int(round(int(size) // int(patch) * float(cfg.downsample_ratio)))

    def tile_canvas(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the tiles an image of this size is cut into, as the processor's image processor cuts it."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        merged = self.processor._merge_kwargs(tokenizer_init_kwargs=getattr(self.processor.tokenizer, "init_kwargs", {}),
                                              **self.processor_kwargs)["images_kwargs"]
        kw = self.processor.image_processor._merge_and_standardize_kwargs(**merged)
        if not kw.get("crop_to_patches") or int(kw["max_patches"]) <= 1:
            return 1, 1
        size = kw["size"]
        cols, rows = get_optimal_tiled_canvas((int(height), int(width)), (size.height, size.width), int(kw["min_patches"]),
                                              int(kw["max_patches"]))
        return int(rows), int(cols)

    def encode_one(self, images: list, prompt: str) -> tuple[list[int], dict[str, torch.Tensor], dict[str, list[int]]]:
        ids, vision, token_types = super().encode_one(images, prompt)
        canvas = [self.tile_canvas(im.height, im.width) for im in images]
        tiles = sum(r * c + (1 if r * c > 1 else 0) for r, c in canvas)
        held = int(vision["pixel_values"].shape[0]) if "pixel_values" in vision else 0
        if tiles != held:
            raise ValueError(f"InternVL: the tiling gives {tiles} tiles (with thumbnails) for image sizes "
                             f"{[(im.width, im.height) for im in images]}, the processor made {held}")
        vision["_canvas"] = torch.tensor(canvas, dtype=torch.long).reshape(-1, 2)
        return ids, vision, token_types

    def layout(self, input_ids: Sequence[int], vision: dict[str, torch.Tensor]) -> ImageLayout:
        """Image i's tiles put together into one (rows * side) x (cols * side) grid (tile t at row t // cols, col t % cols,
        as the image processor crops them), its tiles' tokens row-major in each; the thumbnail last, its own view."""
        ids = np.asarray(input_ids)
        canvas = vision.get("_canvas")
        if canvas is None:
            raise ValueError("InternVL: an input encoded without its tile canvas (encode it with the adapter's encode_one)")
        side = self.side
        per = side * side
        positions = np.flatnonzero(ids == self.image_token_id)
        counts = [per * (r * c + (1 if r * c > 1 else 0)) for r, c in canvas.tolist()]
        if sum(counts) != len(positions):
            raise ValueError(f"InternVL: {len(counts)} images of {counts} tokens expected, the input holds {len(positions)} image tokens")
        k = np.arange(per)
        tr, tc = k // side, k % side
        img, view, row, col = [], [], [], []
        views: dict[tuple[int, str], tuple[int, int]] = {}
        for image, (rows, cols) in enumerate(canvas.tolist()):
            for t in range(rows * cols):
                img.append(np.full(per, image))
                view.append(np.full(per, MAIN_VIEW, dtype=object))
                row.append((t // cols) * side + tr)
                col.append((t % cols) * side + tc)
            views[(image, MAIN_VIEW)] = (rows * side, cols * side)
            if rows * cols > 1:
                img.append(np.full(per, image))
                view.append(np.full(per, THUMBNAIL, dtype=object))
                row.append(tr)
                col.append(tc)
                views[(image, THUMBNAIL)] = (side, side)
        if not img:
            empty = np.zeros(0, np.int64)
            return ImageLayout(empty, empty, np.zeros(0, dtype=object), empty, empty)
        return ImageLayout(positions.astype(np.int64), np.concatenate(img).astype(np.int64), np.concatenate(view),
                           np.concatenate(row).astype(np.int64), np.concatenate(col).astype(np.int64), views)
