"""The explorer's clamp panel (issue 25): the answer and next-token probabilities with one neuron clamped, beside unclamped."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from neuronwidgets.decode.causal import next_token_logprobs
from neuronwidgets.decode.lm_head import vocab_texts
from neuronwidgets.widgets._base import neuron_max

if TYPE_CHECKING:
    from neuronwidgets.decode.lm_head import NeuronDecoding
    from neuronwidgets.model.inputs import ImageLike
    from neuronwidgets.model.session import Session
    from neuronwidgets.store.index import NeuronIndex

#: Next tokens listed on each side, and the decoding's named tokens followed.
TOP_TOKENS = 8
NAMED_TOKENS = 5
ANSWER_TOKENS = 12
#: Steps of the slider between its ends.
SLIDER_STEPS = 100


def clamp_range(index: NeuronIndex | None, layer: int, neuron: int) -> list[float]:
    """[min, max, step] of the slider: -4x..+4x the neuron's max over the index (10 without one)."""
    top = neuron_max(index, layer, neuron) or 2.5
    span = 4.0 * top
    magnitude = 10 ** math.floor(math.log10(span))
    span = math.ceil(span / magnitude) * magnitude  # a round end: 4 x 2.37 -> 10
    return [-float(span), float(span), float(span) / (SLIDER_STEPS / 2)]


def _top(logprobs: torch.Tensor, texts: list[str], k: int) -> list[dict[str, Any]]:
    probs = logprobs.exp()
    values, ids = probs.topk(min(k, probs.numel()))
    return [{"token": texts[int(i)], "token_id": int(i), "prob": float(p)} for p, i in zip(values, ids)]


def unclamped_side(session: Session, image: ImageLike, prompt: str) -> dict[str, Any]:
    """The unclamped answer and next-token distribution (the panel's left side; cache it per input)."""
    logprobs = next_token_logprobs(session, [(image, prompt)])[0]
    return {"answer": session.generate(image, prompt, max_new_tokens=ANSWER_TOKENS), "logprobs": logprobs}


def clamp_panel(session: Session, image: ImageLike, prompt: str, layer: int, neuron: int, value: float, *,
                free: dict | None = None, decoding: NeuronDecoding | None = None, site: str | None = None, seq: int = 0) -> dict[str, Any]:
    """{value, site, seq, before: {answer, top}, after: {answer, top}, named: [{token, before, after}]}."""
    site = site or session.site
    free = free or unclamped_side(session, image, prompt)
    spec = {(int(layer), int(neuron)): float(value)}
    after_lp = next_token_logprobs(session, [(image, prompt)], spec, site=site)[0]
    after_answer = session.generate(image, prompt, max_new_tokens=ANSWER_TOKENS, clamp=spec, site=site)
    texts = vocab_texts(session.tokenizer, after_lp.numel())
    named = []
    if decoding is not None:
        try:
            ids = decoding.top_tokens(layer, neuron, k=NAMED_TOKENS)["token_id"].tolist()
        except KeyError:
            ids = []
        named = [{"token": texts[i], "token_id": int(i), "before": float(free["logprobs"][i].exp()),
                  "after": float(after_lp[i].exp())} for i in ids if 0 <= i < after_lp.numel()]
    return {
        "value": float(value), "site": site, "seq": int(seq), "layer": int(layer), "neuron": int(neuron),
        "before": {"answer": free["answer"], "top": _top(free["logprobs"], texts, TOP_TOKENS)},
        "after": {"answer": after_answer, "top": _top(after_lp, texts, TOP_TOKENS)},
        "named": named,
    }
