"""Gemma 3: every image (and each pan-and-scan crop) becomes a fixed square of pooled soft tokens (16 x 16 = 256)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from neuronwidgets.model.adapters.family import FamilyAdapter, side_of
from neuronwidgets.model.adapters.layout import MAIN_VIEW, ImageLayout, concat, runs

if TYPE_CHECKING:
    from PIL import Image


class Gemma3Adapter(FamilyAdapter):
    family = "Gemma 3 (Gemma3ForConditionalGeneration)"
    model_classes = ("Gemma3ForConditionalGeneration",)
    image_placeholder = "<start_of_image>"
    default_prompt = "<start_of_turn>user\n<start_of_image>{question}<end_of_turn>\n<start_of_turn>model\n"


    @property
    def tokens_per_image(self) -> int:
        return int(self.model.config.mm_tokens_per_image)

    def layout(self, input_ids: Sequence[int], vision: dict[str, torch.Tensor]) -> ImageLayout:
        """Blocks of mm_tokens_per_image tokens, each a square grid; with pan and scan an image's first block is the
        whole image ("grid") and its crops follow ("crop1", ...)."""
        ids = np.asarray(input_ids)
        per = self.tokens_per_image
        side = side_of(per)
        blocks = [b[i : i + per] for b in runs(ids == self.image_token_id) for i in range(0, len(b), per)]
        if any(len(b) != per for b in blocks):
            raise ValueError(f"Gemma 3 image tokens come in blocks of {per}; found blocks of {[len(b) for b in blocks]}")
        crops = self._crops_per_image(vision, len(blocks))
        out, b = [], 0
        k = np.arange(per)
        for image, n_crops in enumerate(crops):
            for crop in range(n_crops + 1):
                view = MAIN_VIEW if crop == 0 else f"crop{crop}"
                out.append(ImageLayout(blocks[b], np.full(per, image), np.full(per, view, dtype=object), k // side, k % side,
                                       {(image, view): (side, side)}))
                b += 1
        return concat(out)

    def _crops_per_image(self, vision: dict[str, torch.Tensor], n_blocks: int) -> list[int]:
        counts = vision.get("_num_crops")
        if counts is not None:
            return [int(c) for c in counts]
        n_images = int(vision["pixel_values"].shape[0]) if "pixel_values" in vision else n_blocks
        if n_blocks == n_images:
            return [0] * n_blocks
        raise ValueError(f"{n_blocks} image blocks for {n_images} pixel arrays: pan and scan crops need num_crops")

    def encode_one(self, images: list, prompt: str) -> tuple[list[int], dict[str, torch.Tensor], dict[str, list[int]]]:
        ids, vision, token_types = super().encode_one(images, prompt)
        n_blocks = int(np.sum(np.asarray(ids) == self.image_token_id)) // self.tokens_per_image
        if n_blocks != len(images):  # pan and scan: how many crops each image got (the processor drops num_crops)
            defaults = dict(getattr(self.processor, "images_kwargs", None) or {})  # the processor's own, e.g. the crops' min ratio
            pan = {**defaults, **{k: v for k, v in self.processor_kwargs.items() if k.startswith(("do_pan_and_scan", "pan_and_scan"))}}
            crops = self.processor.image_processor(images=[list(images)], return_tensors="pt", **pan).get("num_crops")
            if crops is not None:
                vision["_num_crops"] = torch.as_tensor(crops).reshape(-1)
        return ids, vision, token_types

    def count_image_tokens(self, image: Image.Image) -> int:
        if self.processor_kwargs.get("do_pan_and_scan"):  # crops depend on the image: encode it
            ids, _, _ = self.encode_one([image], self.image_placeholder)
            return int(np.sum(np.asarray(ids) == self.image_token_id))
        return self.tokens_per_image
