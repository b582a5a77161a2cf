"""Explanation: what one neuron responds to, in words (and as a concept formula for the concept family)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from neuronwidgets.constants import CATEGORIES, CATEGORY_MODALITY


@dataclass
class Explanation:
    """An explanation of neuron `neuron` of layer `layer`, with where it came from.

    >>> Explanation(layer=3, neuron=117, category="visual", text="red patches")
    `exemplars` are the sample ids the explainer saw (a scorer leaves them out of held-out
    inputs); `concept` is the concept formula ("red", "red AND circle", "red OR blue") of
    the concept family; `model` the chat model; `explainer` the method's name.
    """

    layer: int
    neuron: int
    category: str = "visual"
    text: str = ""
    exemplars: list[str] = field(default_factory=list)
    model: str | None = None
    prompt_version: str | None = None
    explainer: str = "manual"
    concept: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layer, self.neuron = int(self.layer), int(self.neuron)
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {self.category!r}")
        self.text = str(self.text)
        self.exemplars = [str(e) for e in self.exemplars]

    @property
    def modality(self) -> str:
        """Which values the explanation speaks of: 'image' (patches), 'text' (tokens) or 'both'."""
        return CATEGORY_MODALITY.get(self.category, "both")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (round-trips through `from_dict`)."""
        return json.loads(json.dumps(asdict(self), default=_jsonable))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Explanation":
        """Rebuild from `to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_row(self) -> dict[str, Any]:
        """A flat table row (lists and dicts as JSON strings) for Parquet tables."""
        d = self.to_dict()
        d["exemplars"] = json.dumps(d["exemplars"])
        d["extra"] = json.dumps(d["extra"], sort_keys=True)
        return d

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Explanation":
        """Rebuild from a table row written by `to_row` (missing values become defaults)."""
        d = {k: (None if _missing(v) else v) for k, v in dict(row).items()}
        d["exemplars"] = json.loads(d["exemplars"]) if isinstance(d.get("exemplars"), str) else list(d.get("exemplars") or [])
        d["extra"] = json.loads(d["extra"]) if isinstance(d.get("extra"), str) else dict(d.get("extra") or {})
        d["text"] = d.get("text") or ""
        d["category"] = d.get("category") or "visual"
        d["explainer"] = d.get("explainer") or "manual"
        return cls.from_dict(d)

    def __str__(self) -> str:
        return f"layer {self.layer} neuron {self.neuron} ({self.category}): {self.text}"


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
