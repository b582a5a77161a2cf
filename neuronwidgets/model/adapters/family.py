"""What the newer VLM families share: a per-input patch grid, per-input processor outputs carried through batching.

A family adapter encodes each input with one processor call (its pixels may have any shape: Qwen2-VL's
flat patches, LLaVA-NeXT's tiles, Idefics3's crops), keeps the processor's per-token outputs
(`mm_token_type_ids`, `token_type_ids`) beside the token ids, and batches inputs by padding every
tensor to the largest and concatenating along the first axis (images, or samples).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from neuronwidgets.model.adapters.base import ModelAdapter
from neuronwidgets.model.adapters.layout import ImageLayout

if TYPE_CHECKING:
    from PIL import Image
    from transformers import ProcessorMixin

#: Processor outputs that are not model inputs of their own (the token ids and the mask are built per batch).
_TEXT_KEYS = ("input_ids", "attention_mask")


def config_image_token_id(config: Any) -> int:
    """The id of the token the model replaces with image features (image_token_id or image_token_index)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"{type(config).__name__} names no image token (image_token_id / image_token_index)")


def pad_cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors joined along axis 0, each first zero-padded at the end of every other axis to the largest."""
    if len(tensors) == 1:
        return tensors[0]
    ndim = tensors[0].dim()
    if any(t.dim() != ndim for t in tensors):
        raise ValueError(f"cannot batch tensors of different ranks: {[tuple(t.shape) for t in tensors]}")
    if ndim == 0:
        return torch.stack(list(tensors))
    widest = [max(t.shape[d] for t in tensors) for d in range(1, ndim)]
    padded = []
    for t in tensors:
        pad = []
        for d in reversed(range(1, ndim)):
            pad += [0, widest[d - 1] - t.shape[d]]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded, 0)


class FamilyAdapter(ModelAdapter):
    """The shared part of the adapters whose image-token count and grid vary per input."""

    fixed_grid = False
    crop = False  # the grid covers the whole image (no centre crop)
    nested_images = True
    #: Attribute of `model.model` holding the language model.
    language_model_attr = "language_model"
    #: A prompt for models whose processor has no chat template.
    default_prompt = "<image>\n{question}"

    def __init__(self, model: nn.Module, processor: ProcessorMixin | None) -> None:
        super().__init__(model, processor)
        #: Keyword arguments for every processor call, e.g. {"do_pan_and_scan": True} (Gemma 3),
        #: {"do_image_splitting": False} (Idefics3), {"size": {"shortest_edge": ..., "longest_edge": ...}} (Qwen2-VL).
        self.processor_kwargs: dict = {}
        if processor is not None and getattr(processor, "tokenizer", None) is None:
            raise TypeError(f"{type(processor).__name__} has no tokenizer: pass the model's processor")
        params = inspect.signature(model.forward).parameters
        self.accepted_inputs = {name for name, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    # --- neurons -------------------------------------------------------------
    def decoder_layers(self) -> Sequence[nn.Module]:
        inner = getattr(self.model, "model", self.model)
        lm = getattr(inner, self.language_model_attr, None)
        if lm is None:
            raise AttributeError(f"{type(self.model).__name__} has no .model.{self.language_model_attr} "
                                 "(a transformers version this adapter does not know)")
        return lm.layers

    @property
    def n_neurons(self) -> int:
        return int(self.model.config.text_config.intermediate_size)

    @property
    def image_token_id(self) -> int:
        return config_image_token_id(self.model.config)

    @property
    def grid(self) -> tuple[int, int]:
        raise AttributeError(f"{self.family}: the patch grid varies per input; read it from a trace (trace.grid) or "
                             "an encoded input (session.image_layout(encoded).grids)")

    @property
    def prompt_template(self) -> str:
        """A prompt with `{question}`: the processor's chat template for one image and a question, else the family's own."""
        template = getattr(self.processor, "chat_template", None)
        cached = getattr(self, "_prompt_template", None)  # (chat template, prompt): adapt_prompt asks once per prompt
        if cached is not None and cached[0] == template:
            return cached[1]
        prompt = self._template_prompt(template)
        self._prompt_template = (template, prompt)
        return prompt

    def _template_prompt(self, template) -> str:
        if template:
            marker = "\x00QUESTION\x00"
            try:
                text = self.processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": marker}]}],
                    add_generation_prompt=True, tokenize=False)
            except Exception:  # noqa: BLE001 - a template that wants other content: the family's prompt
                text = None
            if isinstance(text, str) and marker in text and text.count(self.image_placeholder) == 1:
                bos = getattr(self.processor.tokenizer, "bos_token", None)
                if bos and text.startswith(bos) and getattr(self.processor.tokenizer, "add_bos_token", True):
                    text = text[len(bos):]  # the tokenizer adds it itself
                return text.replace("{", "{{").replace("}", "}}").replace(marker, "{question}")
        return self.default_prompt

    # --- encoding --------------------------------------------------------------
    def encode_one(self, images: list, prompt: str) -> tuple[list[int], dict[str, torch.Tensor], dict[str, list[int]]]:
        """One input through the processor: its token ids, its vision inputs (tensors) and its per-token inputs (lists)."""
        out = self.processor(images=[list(images)] if self.nested_images else list(images), text=[prompt], return_tensors="pt",
                             **self.processor_kwargs)
        ids = out["input_ids"][0]
        real = out["attention_mask"][0].bool() if "attention_mask" in out else torch.ones_like(ids, dtype=torch.bool)
        vision, token_types = {}, {}
        for key, value in out.items():
            if key in _TEXT_KEYS or key not in self.accepted_inputs or not isinstance(value, torch.Tensor):
                continue
            if value.dim() == 2 and value.shape == out["input_ids"].shape and key.endswith("token_type_ids"):
                token_types[key] = value[0][real].tolist()
            else:
                vision[key] = value
        return ids[real].tolist(), vision, token_types

    def model_inputs(self, batch: Sequence, width: int, dtype: torch.dtype, device: str | torch.device) -> dict[str, torch.Tensor]:
        """The vision and per-token inputs of a right-padded batch (not input_ids and attention_mask)."""
        out = {}
        for key in batch[0].vision:
            if key.startswith("_"):  # what the adapter keeps for the layout, not a model input
                continue
            joined = pad_cat([e.vision[key] for e in batch])
            out[key] = joined.to(device, dtype) if joined.is_floating_point() else joined.to(device)
        for key in batch[0].token_types:
            types = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                seq = e.token_types[key]
                types[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            out[key] = types.to(device)
        return out

    def layout(self, input_ids: Sequence[int], vision: dict[str, torch.Tensor]) -> ImageLayout:
        """Where the image tokens of one encoded input are (see ImageLayout)."""
        raise NotImplementedError

    # --- sizes ---------------------------------------------------------------------
    def count_image_tokens(self, image: Image.Image) -> int:
        """How many image tokens one image becomes with this processor."""
        size = [(image.height, image.width)]
        counts = None
        if not self.processor_kwargs:  # (the helper may not read every processor keyword: with some, encode)
            try:
                counts = self.processor._get_num_multimodal_tokens(image_sizes=size).get("num_image_tokens")
            except Exception:  # noqa: BLE001 - a processor without the helper: encode it
                counts = None
        if counts:
            return int(counts[0])
        ids, _, _ = self.encode_one([image], self.image_placeholder)
        return int(np.sum(np.asarray(ids) == self.image_token_id))


def side_of(n: int) -> int:
    """The side of a square grid of n tokens (an error when n is not a square)."""
    side = math.isqrt(int(n))
    if side * side != n:
        raise ValueError(f"{n} tokens do not form a square grid")
    return side
