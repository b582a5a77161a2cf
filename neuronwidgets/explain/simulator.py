"""Simulator: a chat model predicts a neuron's 0-10 activations on a new input from an explanation alone.

For an image it sees the image with its patch grid labelled and answers one value per patch;
for text, the numbered tokens and one value per token; always as JSON. Parsing is strict
(shape and range); a reply that fails is asked again once, then `SimulationParseError`
carries both raw replies.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from neuronwidgets.explain.data import sample_of
from neuronwidgets.explain.explanation import Explanation
from neuronwidgets.explain.prompts import (
    SIMULATE_VERSION,
    expected_form,
    reask_messages,
    simulate_image_messages,
    simulate_text_messages,
)
from neuronwidgets.records import ActivationRecord
from neuronwidgets.render import patch_grid

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.llm.client import OpenAIClient
    from neuronwidgets.store.index import NeuronIndex


class SimulationParseError(ValueError):
    """A simulator reply that is not the JSON asked for; `raw_reply` keeps the (last) reply, `replies` all of them."""

    def __init__(self, message: str, raw_reply: str, replies: list[str] | None = None):
        super().__init__(message)
        self.raw_reply = raw_reply
        self.replies = list(replies or [raw_reply])


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def _json_in(reply: str) -> Any:
    """The JSON value in a reply: the whole reply, a fenced block, or the outermost {...} / [...] span."""
    text = reply.strip()
    fenced = _FENCE.search(text)
    candidates = [text] + ([fenced.group(1).strip()] if fenced else [])
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            candidates.append(text[i : j + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
    raise ValueError("the reply holds no JSON")


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where} is {json.dumps(v)[:40]}, not a number")
    if not math.isfinite(v) or not 0 <= v <= 10:
        raise ValueError(f"{where} is {v}, outside 0-10")
    return float(v)


def parse_activations(reply: str, shape: tuple[int, ...]) -> np.ndarray:
    """The predictions in a reply, as float [prod(shape)]; raises ValueError naming what is wrong.

    `shape` is (rows, cols) for an image (nested rows, or one flat row-major list of rows*cols)
    or (n,) for text. Values must be numbers from 0 to 10.
    """
    value = _json_in(reply)
    if isinstance(value, dict):
        if "activations" not in value:
            raise ValueError(f'the JSON object has no "activations" key (keys: {sorted(value)[:5]})')
        value = value["activations"]
    if not isinstance(value, list):
        raise ValueError('"activations" is not a list')
    n = int(np.prod(shape))
    if len(shape) == 2 and len(value) == shape[0] and all(isinstance(r, list) for r in value):
        for i, row in enumerate(value):
            if len(row) != shape[1]:
                raise ValueError(f"row {i} has {len(row)} values, expected {shape[1]}")
        flat = [(v, f"row {i} column {j}") for i, row in enumerate(value) for j, v in enumerate(row)]
    else:
        if any(isinstance(v, list) for v in value):
            raise ValueError(f"expected {expected_form(shape)}, got {len(value)} rows")
        if len(value) != n:
            raise ValueError(f"expected {expected_form(shape)}, got {len(value)} values")
        flat = [(v, f"value {i}") for i, v in enumerate(value)]
    return np.asarray([_number(v, where) for v, where in flat], np.float64)


class Simulator:
    """The LLM simulator: `simulate(explanation, record, modality)` -> 0-10 predictions (patches row-major, or tokens).

    `data` (a NeuronIndex or a sequence of samples) is where records' images are found
    when the scorer does not hand the sample over itself.
    """

    name = "llm"

    def __init__(self, client: OpenAIClient, data: NeuronIndex | Sequence[Sample] | None = None, *,
                 prompt_version: str = SIMULATE_VERSION, min_side: int = 384, detail: str = "auto", reask: bool = True) -> None:
        self.client = client
        self.data = data
        self.prompt_version = prompt_version
        self.min_side = min_side
        self.detail = detail
        self.reask = reask

    def __repr__(self) -> str:
        return f"<Simulator {getattr(self.client, 'model', '?')!r} prompt {self.prompt_version!r}>"

    def simulate(self, explanation: Explanation | str, item: ActivationRecord | Sample, modality: str = "image", *,
                 sample: Sample | None = None, grid: tuple[int, int] | None = None, tokens: list[str] | None = None) -> np.ndarray:
        """Predicted 0-10 activations on `item` (an ActivationRecord or a Sample) for 'image' or 'text'."""
        text = explanation.text if isinstance(explanation, Explanation) else str(explanation)
        record = item if isinstance(item, ActivationRecord) else None
        if modality == "image":
            if sample is None:
                sample = sample_of(self.data, record) if record is not None else item
            if grid is None:
                if record is None:
                    raise ValueError("pass grid=(rows, cols) to simulate a sample without a record")
                grid = tuple(np.shape(record.patch_map))
            rows, cols = grid
            picture = patch_grid(sample.get_image(), rows, cols, min_side=self.min_side)
            messages = simulate_image_messages(text, picture, rows, cols, self.detail)
            shape: tuple[int, ...] = (rows, cols)
        elif modality == "text":
            if tokens is None:
                if record is None:
                    raise ValueError("pass tokens=[...] to simulate text without a record")
                tokens = list(record.text_tokens)
            if not tokens:
                return np.zeros(0)
            messages = simulate_text_messages(text, tokens)
            shape = (len(tokens),)
        else:
            raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
        return self._ask(messages, shape)

    def _reply_budget(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """max_tokens large enough for the whole answer (a 24x24 grid is ~1,700 tokens of digits and commas)."""
        limit = getattr(self.client, "params", {}).get("max_tokens")
        needed = 4 * int(np.prod(shape)) + 64
        return {"max_tokens": needed} if limit is not None and limit < needed else {}

    def _ask(self, messages: list[dict[str, Any]], shape: tuple[int, ...]) -> np.ndarray:
        budget = self._reply_budget(shape)
        reply = self.client.chat(messages, prompt_version=self.prompt_version, **budget).text
        try:
            return parse_activations(reply, shape)
        except ValueError as err:
            problem = str(err)
            if not self.reask:
                raise SimulationParseError(f"simulator reply could not be parsed: {problem}; reply: {reply[:200]!r}", reply) from err
        second = self.client.chat(reask_messages(messages, reply, problem), prompt_version=self.prompt_version, **budget).text
        try:
            return parse_activations(second, shape)
        except ValueError as err:
            raise SimulationParseError(
                f"simulator reply could not be parsed, even when asked again: {err}; last reply: {second[:200]!r}",
                second,
                [reply, second],
            ) from err
