"""Qwen2-VL and Qwen2.5-VL: dynamic resolution; each image becomes (h / 2) x (w / 2) merged patches, row-major."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from neuronwidgets.model.adapters.family import FamilyAdapter
from neuronwidgets.model.adapters.layout import ImageLayout, concat, one_grid, runs

QWEN_MODELS = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")


class Qwen2VLAdapter(FamilyAdapter):
    family = "Qwen2-VL / Qwen2.5-VL (Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration)"
    model_classes = QWEN_MODELS
    image_placeholder = "<|image_pad|>"
    default_prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"


    @property
    def merge_size(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    def layout(self, input_ids: Sequence[int], vision: dict[str, torch.Tensor]) -> ImageLayout:
        """Image i's grid is image_grid_thw[i] (t, h, w) in patches, merged m x m: (h / m) x (w / m) tokens, row-major."""
        ids = np.asarray(input_ids)
        grids = vision.get("image_grid_thw")
        blocks = runs(ids == self.image_token_id)
        n_images = 0 if grids is None else len(grids)
        m = self.merge_size
        # consecutive images may touch (no text between them): split the runs by each image's token count
        sizes = [int(t * h * w) // (m * m) for t, h, w in (grids.tolist() if grids is not None else [])]
        positions = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        if sum(sizes) != len(positions):
            raise ValueError(f"image_grid_thw gives {sum(sizes)} image tokens for {n_images} images, the input holds {len(positions)}")
        out, start = [], 0
        for i, (t, h, w) in enumerate(grids.tolist() if grids is not None else []):
            if t != 1:
                raise ValueError(f"image {i} has {t} temporal patches: videos are not supported")
            out.append(one_grid(positions[start : start + sizes[i]], h // m, w // m, image=i))
            start += sizes[i]
        return concat(out)
