"""The sample type every dataset yields, and a small sequence wrapper around a list of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from PIL import Image

from neuronwidgets.constants import DESCRIBE_PROMPT, DESCRIBE_QUESTION, PROMPT_TEMPLATE  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class QA:
    """One question about an image, its one right answer, its kind and the full model prompt."""

    question: str
    answer: str
    kind: str
    prompt: str


class _LazyImage:
    """The `image` field: what was given, else the dataset's loader's result (read on each access, never kept)."""

    def __set_name__(self, owner, name: str) -> None:
        self._slot = "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return None  # the field's default
        image = obj.__dict__.get(self._slot)
        if image is None and obj.__dict__.get("load_image") is not None:
            return obj.load_image()
        return image

    def __set__(self, obj, value) -> None:
        obj.__dict__[self._slot] = value


@dataclass
class Sample:
    """An image with what we know about it.

    `id` is stable across runs (it keys exemplars in an index); `prompt` is what the model
    reads with the image (the describe-prompt by default); `masks` maps a concept name to
    a boolean pixel mask of the image's size (absent where the dataset has none).
    """

    id: str
    image: Image.Image | None = _LazyImage()  # type: ignore[assignment]  # lazy datasets load it on access
    prompt: str = DESCRIBE_PROMPT
    caption: str | None = None
    qa: list[QA] = field(default_factory=list)
    masks: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    load_image: Callable[[], Image.Image] | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # without the image: a lazy sample would read it from disk
        extra = f", caption={self.caption!r}" if self.caption else ""
        return f"Sample(id={self.id!r}{extra}, qa={len(self.qa)}, masks={sorted(self.masks or {})})"

    def get_image(self) -> Image.Image:
        """The image as RGB PIL, loading it from disk when the dataset is lazy."""
        image = self.image
        if image is None:
            raise ValueError(f"sample {self.id!r} has no image")
        return image

    def patch_masks(self, rows: int, cols: int) -> dict[str, np.ndarray]:
        """Share of each patch of a rows x cols grid that each concept covers (float32)."""
        if not self.masks:
            return {}
        out = {}
        for name, mask in self.masks.items():
            h, w = mask.shape
            if h % rows or w % cols:
                # Resample to a multiple of the grid first, so uneven images still work.
                img = Image.fromarray(mask.astype(np.uint8) * 255).resize((cols * 8, rows * 8), Image.NEAREST)
                mask = np.asarray(img) > 127
                h, w = mask.shape
            out[name] = mask.reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3)).astype(np.float32)
        return out


class SampleList(Sequence):
    """A read-only sequence of samples: len, index, slice (another SampleList) and iteration."""

    def __init__(self, samples: Sequence[Sample], name: str = "samples", fingerprint: str | None = None):
        self._samples = list(samples)
        self.name = name
        self.fingerprint = fingerprint or name

    def __len__(self) -> int:
        return len(self._samples)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> "SampleList": ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            return SampleList(self._samples[i], name=self.name, fingerprint=f"{self.fingerprint}[{start}:{stop}:{step}]")
        return self._samples[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    def __repr__(self) -> str:
        return f"<SampleList {self.name!r}: {len(self)} samples>"
