"""Causal scores: does clamping a neuron raise the tokens its LM-head decoding names?

Definition. For neuron ``n`` of layer ``l``, named tokens ``T`` (by default its top-k
``writes``/``promoted`` tokens from a `NeuronDecoding`), prompts ``p_1..p_P`` and a clamp
value ``v`` at a site (``"act"`` or ``"mlp_in"``, see `neuronwidgets.model.intervene`):

    delta_i(t) = log p_v(t | p_i) - log p(t | p_i)

where ``p(. | p_i)`` is the model's next-token distribution at the last position of prompt
``p_i`` in the unclamped run and ``p_v`` the same with the neuron set to ``v`` at every
position. Then

    score    = mean over i and t in T of delta_i(t)
    baseline = mean over i and every token t of the vocabulary of delta_i(t)
    excess   = score - baseline

The baseline is what ``|T|`` tokens drawn uniformly at random from the vocabulary get on
average, since a clamp that sharpens or flattens the distribution moves every log-prob.
``suppressed_score`` is the same mean over the decoding's suppressed tokens (a neuron whose
decoding is right has it below the baseline). Units: nats; a score of 1 means clamping
multiplies the named tokens' probabilities by e on average (geometric mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neuronwidgets.checks import whole_number
from neuronwidgets.decode.lm_head import find_parts, vocab_texts
from neuronwidgets.model.intervene import check_neuron, clamp

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from neuronwidgets.decode.lm_head import NeuronDecoding
    from neuronwidgets.model.session import Session


def _module(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module):
        return inner  # a Session
    raise TypeError(f"expected a transformers model or a Session, got {type(model).__name__}")


def session_inputs(session: Session, pairs: Sequence) -> list[dict]:
    """Model inputs (batch size 1 each) for (image, prompt) pairs, encoded the way `session.trace` encodes them."""
    out = []
    for pair in pairs:
        if isinstance(pair, Mapping):
            out.append(dict(pair))
            continue
        try:
            image, prompt = pair
        except (TypeError, ValueError):
            raise TypeError(f"an input is a mapping of tensors or an (image, prompt) pair, got {type(pair).__name__}") from None
        enc = session.encode(image, prompt)
        out.append({"input_ids": torch.tensor([enc.input_ids]),
                    "attention_mask": torch.ones(1, len(enc.input_ids), dtype=torch.long),
                    "pixel_values": enc.pixel_values[None].to(session.dtype)})
    return out


def _as_inputs(model, inputs) -> list:
    if isinstance(inputs, Mapping):
        return [inputs]
    inputs = list(inputs)
    if not isinstance(model, nn.Module) and hasattr(model, "encode"):
        return session_inputs(model, inputs)
    bad = [type(x).__name__ for x in inputs if not isinstance(x, Mapping)]
    if bad:
        raise TypeError(f"inputs for a bare model are mappings of tensors (a processor's output), got {bad[0]}; "
                        "(image, prompt) pairs need a Session")
    return inputs


def _site(model, site: str | None) -> str:
    """The site asked for, else a Session's own, else "act"."""
    return site or getattr(model, "site", None) or "act"


def _last_positions(inputs: Mapping) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    ids = inputs.get("input_ids")
    batch, length = ids.shape if ids is not None else inputs["inputs_embeds"].shape[:2]
    if mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long)
    mask = mask.to("cpu").bool()
    if not mask.any(dim=1).all():
        raise ValueError("an input has no attended token (its attention_mask is all 0)")
    # the last attended position, whether the batch is left or right padded
    return (length - 1 - mask.flip(1).int().argmax(dim=1)).long()


@torch.inference_mode()
def next_token_logprobs(model: nn.Module | Session, inputs: Sequence[Mapping], spec: Mapping | None = None, site: str | None = None,
                        means: Mapping | None = None) -> torch.Tensor:
    """log p(next token) at each input's last position, float32 [n_inputs, vocab], with neurons clamped by `spec`.

    Each element of `inputs` is a mapping of tensors for ``model(**inputs)`` (a processor's
    output), batch size 1 or a padded batch; with a Session as `model`, also an (image, prompt) pair.
    """
    module = _module(model)
    inputs = _as_inputs(model, inputs)
    rows = []
    layers = find_parts(module).layers
    device = next(module.parameters()).device
    # A Session (or a FeatureSession, whose units are SNMF features) knows how to set its own units; a bare model is hooked here.
    if isinstance(model, nn.Module) or not hasattr(model, "clamped"):
        setting = clamp(layers, dict(spec or {}), site=_site(model, site), means=means)
    else:
        setting = model.clamped(dict(spec or {}), means=means, site=site)
    with setting:
        for inp in inputs:
            inp = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in dict(inp).items()}
            logits = module(**inp).logits
            pos = _last_positions(inp).to(logits.device)
            last = logits[torch.arange(logits.shape[0], device=logits.device), pos]
            rows.append(torch.log_softmax(last.float(), dim=-1).cpu())
    if not rows:
        raise ValueError("no inputs given: a causal score needs at least one prompt")
    return torch.cat(rows)


@dataclass
class CausalScore:
    """How much clamping one neuron to `value` moves the log-probs of the tokens named for it (see the module)."""

    layer: int
    neuron: int
    value: float | str
    site: str
    tokens: list[int]
    score: float
    baseline: float
    suppressed_score: float | None
    per_token: pd.DataFrame = field(repr=False)

    @property
    def excess(self) -> float:
        """score - baseline: the named tokens' rise beyond a random set's."""
        return self.score - self.baseline


def _named_tokens(decoding, layer: int, neuron: int, kind: str, direction: str, k: int) -> list[int]:
    if decoding is None:
        raise ValueError("give the tokens to score, or a NeuronDecoding to take them from")
    return [int(t) for t in decoding.top_tokens(layer, neuron, kind=kind, direction=direction, k=k)["token_id"]]


def causal_score(model: nn.Module | Session, inputs: Sequence[Mapping], layer: int, neuron: int, value: float | str, *,
                 decoding: NeuronDecoding | None = None, tokens: Sequence[int] | None = None, k: int = 10, kind: str = "writes",
                 site: str | None = None, means: Mapping | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> CausalScore:
    """The causal score of neuron (`layer`, `neuron`) clamped to `value` over `inputs` (definition: module docstring).

    The scored tokens are `tokens`, or the top `k` promoted tokens of `kind` in `decoding`.
    """
    module = _module(model)
    if tokenizer is None and not isinstance(model, nn.Module):
        tokenizer = getattr(model, "tokenizer", None)
    layer, neuron = check_neuron(find_parts(module).layers, (layer, neuron))
    k = whole_number(k, "k")
    if tokens is None:
        tokens = _named_tokens(decoding, layer, neuron, kind, "promoted", k)
    tokens = [whole_number(t, "token id") for t in tokens]
    if not tokens:
        raise ValueError("no tokens to score")
    inputs = _as_inputs(model, inputs)
    before = next_token_logprobs(module, inputs)
    site = _site(model, site)
    after = next_token_logprobs(module, inputs, {(layer, neuron): value}, site=site, means=means)
    vocab = before.shape[1]
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise IndexError(f"token ids {bad} are outside the vocabulary 0..{vocab - 1}")
    delta = after - before
    idx = torch.tensor(tokens)
    score = float(delta[:, idx].mean())
    baseline = float(delta.mean())
    suppressed = None
    if decoding is not None:
        try:
            sup = _named_tokens(decoding, layer, neuron, kind, "suppressed", k)
            suppressed = float(delta[:, torch.tensor(sup)].mean())
        except KeyError:
            suppressed = None
    texts = vocab_texts(tokenizer, vocab)
    n_inputs = before.shape[0]
    per_token = pd.DataFrame({
        "input": np.repeat(np.arange(n_inputs), len(tokens)),
        "token_id": np.tile(np.array(tokens), n_inputs),
        "token": [texts[t] for t in tokens] * n_inputs,
        "logprob_before": before[:, idx].reshape(-1).numpy(),
        "logprob_after": after[:, idx].reshape(-1).numpy(),
    })
    per_token["delta"] = per_token["logprob_after"] - per_token["logprob_before"]
    return CausalScore(layer=layer, neuron=neuron, value=value, site=site, tokens=tokens, score=score,
                       baseline=baseline, suppressed_score=suppressed, per_token=per_token)


def score_explanation(explanation: Any, model: nn.Module | Session, inputs: Sequence[Mapping], value: float | str,
                      decoding: NeuronDecoding | None = None, **kwargs: Any) -> CausalScore:
    """`causal_score` for the neuron an Explanation (anything with .layer and .neuron) is about."""
    return causal_score(model, inputs, explanation.layer, explanation.neuron, value, decoding=decoding, **kwargs)


def clamp_sweep(model: nn.Module | Session, inputs: Sequence[Mapping], layer: int, neuron: int, values: Sequence[float],
                tokens: Sequence[int], site: str | None = None) -> pd.DataFrame:
    """p(token) at the next position, averaged over `inputs`, for each clamp value: value, token_id, prob, logprob."""
    module = _module(model)
    layer, neuron = check_neuron(find_parts(module).layers, (layer, neuron))
    tokens = [whole_number(t, "token id") for t in tokens]
    inputs = _as_inputs(model, inputs)
    rows = []
    for v in values:
        lp = next_token_logprobs(module, inputs, {(layer, neuron): v}, site=_site(model, site))[:, tokens]
        for j, t in enumerate(tokens):
            rows.append({"value": v, "token_id": t, "prob": float(lp[:, j].exp().mean()),
                         "logprob": float(lp[:, j].mean())})
    return pd.DataFrame(rows)
