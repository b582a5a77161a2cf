"""LLaVA-1.5 (`LlavaForConditionalGeneration`): Llama decoder MLPs, one image, a square grid."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from neuronwidgets.model.adapters.base import ModelAdapter


class LlavaAdapter(ModelAdapter):
    family = "LLaVA-1.5 (transformers LlavaForConditionalGeneration with a Llama-style MLP)"
    model_classes = ("LlavaForConditionalGeneration",)


    def decoder_layers(self) -> Sequence[nn.Module]:
        inner = getattr(self.model, "model", self.model)
        lm = getattr(inner, "language_model", None)
        if lm is None:  # transformers < 4.52 kept the LM under the top-level module
            lm = self.model.language_model.model
        return lm.layers

    @property
    def n_neurons(self) -> int:
        return self.model.config.text_config.intermediate_size

    @property
    def image_token_id(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "image_token_id", None) or cfg.image_token_index

    @property
    def grid(self) -> tuple[int, int]:
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        if self.model.config.vision_feature_select_strategy == "full":
            raise NotImplementedError("vision_feature_select_strategy='full' (CLS kept) has no square patch grid")
        assert side == int(math.isqrt(side * side))
        return side, side
