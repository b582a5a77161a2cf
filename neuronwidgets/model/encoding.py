"""From an image and a prompt to what the model reads: token ids (image tokens expanded), pixels, a token table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image

from neuronwidgets.checks import whole_number
from neuronwidgets.constants import PROMPT_TEMPLATE
from neuronwidgets.model.adapters.layout import MAIN_VIEW, ImageLayout
from neuronwidgets.model.inputs import load_image

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, ProcessorMixin

    from neuronwidgets.model.adapters.base import ModelAdapter
    from neuronwidgets.model.inputs import ImageLike


@dataclass
class Encoded:
    """One input ready for the model: token ids (image tokens expanded) and pixels.

    LLaVA-1.5: pixel_values [3, H, W]. The other families: `vision` holds the input's processor
    outputs as the processor shapes them for one input (pixel_values, image_grid_thw, image_sizes,
    pixel_attention_mask, ...; pixel_values is the same tensor), `token_types` its per-token
    outputs (mm_token_type_ids, token_type_ids; 0 on the continuation).
    """

    input_ids: list[int]
    pixel_values: torch.Tensor | None  # LLaVA-1.5: [3, H, W]; else vision["pixel_values"]
    n_prompt: int  # tokens before the continuation
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    token_types: dict[str, list[int]] = field(default_factory=dict)
    n_images: int = 1


def image_list(image: ImageLike | Sequence[ImageLike]) -> list[Image.Image]:
    """The images of one input: one image, or a list / tuple of them (several images in one prompt)."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("an input needs at least one image")
    return [load_image(im) for im in items]


class Encoder:
    """A processor and an adapter: prompts checked, batches encoded, positions told apart (image patch or text)."""

    def __init__(self, processor: ProcessorMixin, adapter: ModelAdapter, vocab_size: int) -> None:
        self.processor = processor
        self.adapter = adapter
        self.vocab_size = int(vocab_size)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer

    def check_prompt(self, prompt: str, n_images: int = 1) -> str:
        """The prompt the model reads: `prompt` in the adapter's format (`adapter.adapt_prompt`: LLaVA-1.5's template around
        a question becomes the model's own), if it holds the image placeholder once per image; else a ValueError showing a good prompt."""
        placeholder = self.adapter.image_placeholder
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        prompt = self.adapter.adapt_prompt(prompt)
        count = prompt.count(placeholder)
        if count != n_images:
            what = "does not contain" if count == 0 else f"contains {count} times"
            times = "exactly once" if n_images == 1 else f"once per image ({n_images} times)"
            template = self.adapter.prompt_template
            rewritten = "" if template == PROMPT_TEMPLATE else f" (or LLaVA-1.5's {PROMPT_TEMPLATE!r}, which is rewritten to it)"
            raise ValueError(
                f"the prompt {what} the image placeholder {placeholder!r}; it must appear {times}. "
                f"Expected a prompt like {template.format(question='What is in the image?')!r}{rewritten}"
            )
        return prompt

    def encode_batch(self, images: Sequence, prompts: Sequence[str], continuations: Sequence | None = None) -> list[Encoded]:
        """`encode` for several inputs in one processor call: the same ids and pixels as one call each, in a
        third of the time on the toy (a processor call has a fixed cost). A continuation: text, or token ids."""
        continuations = [None] * len(images) if continuations is None else list(continuations)
        if not len(images) == len(prompts) == len(continuations):
            raise ValueError(f"got {len(images)} images, {len(prompts)} prompts and {len(continuations)} continuations")
        if not self.adapter.fixed_grid:
            return self._encode_each(images, prompts, continuations)
        prompts = [self.check_prompt(prompt) for prompt in prompts]
        if any(isinstance(im, (list, tuple)) for im in images):
            raise ValueError(f"{self.adapter.family} reads one image per prompt; got a list of images for one input")
        pils = [load_image(im) for im in images]
        if not pils:
            return []
        if len(pils) > 1 and self.tokenizer.pad_token is None:  # a tokenizer without a pad token: one call each
            return [self.encode_batch([im], [p], [c])[0] for im, p, c in zip(pils, prompts, continuations)]
        enc = self.processor(images=pils, text=list(prompts), return_tensors="pt", padding=len(pils) > 1)
        real = enc["attention_mask"].bool()  # whichever side the tokenizer pads
        texts = [i for i, c in enumerate(continuations) if isinstance(c, str) and c.strip()]
        said = self.tokenizer([" " + continuations[i].strip() for i in texts], add_special_tokens=False)["input_ids"] if texts else []
        cont = dict(zip(texts, said))
        out = []
        for i, c in enumerate(continuations):
            ids = enc["input_ids"][i][real[i]].tolist()
            n_prompt = len(ids)
            if c is not None:
                ids = ids + self.checked_continuation(cont.get(i, []) if isinstance(c, str) else c)
            out.append(Encoded(ids, enc["pixel_values"][i], n_prompt))
        return out

    def _encode_each(self, images: Sequence, prompts: Sequence[str], continuations: Sequence) -> list[Encoded]:
        """A family whose inputs differ in shape: one processor call per input (its pixels as the processor shapes them)."""
        out = []
        for image, prompt, c in zip(images, prompts, continuations):
            pils = image_list(image)
            prompt = self.check_prompt(prompt, len(pils))
            ids, vision, token_types = self.adapter.encode_one(pils, prompt)
            n_prompt = len(ids)
            if c is not None:
                said = self.tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"] if isinstance(c, str) and c.strip() else []
                more = self.checked_continuation(said if isinstance(c, str) else c)
                ids = ids + more
                token_types = {k: v + [0] * len(more) for k, v in token_types.items()}
            out.append(Encoded(ids, vision.get("pixel_values"), n_prompt, vision, token_types, len(pils)))
        return out

    def layout(self, enc: Encoded) -> ImageLayout:
        """Where `enc`'s image tokens are: image, view, row and col of each (see ImageLayout)."""
        return self.adapter.layout(enc.input_ids, enc.vision)

    def checked_continuation(self, ids: Sequence[int]) -> list[int]:
        """Continuation token ids, checked: in the model's vocabulary, and no image token (its image is the prompt's)."""
        ids = [whole_number(t, "a continuation token id") for t in ids]
        vocab = self.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"continuation token ids {bad[:5]} are outside the model's vocabulary 0..{vocab - 1}")
        if self.adapter.image_token_id in ids:
            raise ValueError(f"the continuation holds the image token ({self.adapter.image_placeholder!r}): an image goes in the prompt, "
                             "once; the continuation is text the model reads after it")
        return ids

    def token_table(self, enc: Encoded, layout: ImageLayout | None = None) -> pd.DataFrame:
        """One row per position: position, token_id, token, modality, part, row, col, image, view, view_row, view_col.

        row, col: the token's place in its image's main grid ("grid" view; -1 for text and for image
        tokens of other views: a base or global overview, crops, newlines); image: which of the
        prompt's images (-1 for text); view, view_row, view_col: its view and place there.
        """
        ids = np.asarray(enc.input_ids)
        layout = self.layout(enc) if layout is None else layout
        n = len(ids)
        is_image = np.zeros(n, bool)
        is_image[layout.positions] = True
        held = int((ids == self.adapter.image_token_id).sum())
        if held != len(layout.positions):
            raise ValueError(f"the layout places {len(layout.positions)} image tokens, the input holds {held}")
        positions = np.arange(n)
        part = np.where(is_image, "image", np.where(positions < enc.n_prompt, "prompt", "continuation"))
        image, view = np.full(n, -1), np.full(n, "", dtype=object)
        view_row, view_col = np.full(n, -1), np.full(n, -1)
        image[layout.positions], view[layout.positions] = layout.image, layout.view
        view_row[layout.positions], view_col[layout.positions] = layout.row, layout.col
        main = view == MAIN_VIEW
        return pd.DataFrame(
            {
                "position": positions,
                "token_id": ids,
                "token": token_texts(self.tokenizer, ids),
                "modality": np.where(is_image, "image", "text"),
                "part": part,
                "row": np.where(main, view_row, -1),
                "col": np.where(main, view_col, -1),
                "image": image,
                "view": view,
                "view_row": view_row,
                "view_col": view_col,
            }
        )


def token_texts(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Each token's own text, faithfully: SentencePiece's '\u2581' as a space, byte tokens kept."""
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [(p or "").replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n") for p in pieces]
