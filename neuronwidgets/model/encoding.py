"""From an image and a prompt to what the model reads: token ids (image tokens expanded), pixels, a token table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from neuronwidgets.checks import whole_number
from neuronwidgets.model.inputs import load_image


@dataclass
class Encoded:
    """One input ready for the model: token ids (image tokens expanded) and pixels."""

    input_ids: list[int]
    pixel_values: torch.Tensor  # [3, H, W]
    n_prompt: int  # tokens before the continuation


class Encoder:
    """A processor and an adapter: prompts checked, batches encoded, positions told apart (image patch or text)."""

    def __init__(self, processor, adapter, vocab_size: int):
        self.processor = processor
        self.adapter = adapter
        self.vocab_size = int(vocab_size)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def check_prompt(self, prompt: str) -> str:
        placeholder = self.adapter.image_placeholder
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        count = prompt.count(placeholder)
        if count != 1:
            what = "does not contain" if count == 0 else f"contains {count} times"
            raise ValueError(
                f"the prompt {what} the image placeholder {placeholder!r}; it must appear exactly once. "
                f"Expected a prompt like {self.adapter.prompt_template.format(question='What is in the image?')!r}"
            )
        return prompt

    def encode_batch(self, images: Sequence, prompts: Sequence[str], continuations: Sequence | None = None) -> list[Encoded]:
        """`encode` for several inputs in one processor call: the same ids and pixels as one call each, in a
        third of the time on the toy (a processor call has a fixed cost). A continuation: text, or token ids."""
        continuations = [None] * len(images) if continuations is None else list(continuations)
        if not len(images) == len(prompts) == len(continuations):
            raise ValueError(f"got {len(images)} images, {len(prompts)} prompts and {len(continuations)} continuations")
        for prompt in prompts:
            self.check_prompt(prompt)
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

    def checked_continuation(self, ids) -> list[int]:
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

    def token_table(self, enc: Encoded) -> pd.DataFrame:
        """One row per position: position, token_id, token, modality, part, row, col."""
        ids = np.asarray(enc.input_ids)
        is_image = ids == self.adapter.image_token_id
        rows, cols = self.adapter.grid
        n_image = int(is_image.sum())
        if n_image != rows * cols:
            raise ValueError(f"expected {rows * cols} image tokens for a {rows}x{cols} grid, found {n_image}")
        order = np.cumsum(is_image) - 1
        positions = np.arange(len(ids))
        part = np.where(is_image, "image", np.where(positions < enc.n_prompt, "prompt", "continuation"))
        return pd.DataFrame(
            {
                "position": positions,
                "token_id": ids,
                "token": token_texts(self.tokenizer, ids),
                "modality": np.where(is_image, "image", "text"),
                "part": part,
                "row": np.where(is_image, order // cols, -1),
                "col": np.where(is_image, order % cols, -1),
            }
        )


def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's own text, faithfully: SentencePiece's '\u2581' as a space, byte tokens kept."""
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [(p or "").replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n") for p in pieces]
