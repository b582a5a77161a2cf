"""Tiny models with planted neurons whose decoding and clamping effect are known exactly."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from neuronwidgets.decode import find_parts

VOCAB = 120
HIDDEN = 32
INTERMEDIATE = 40
LAYERS = 2


def tiny_llama(seed: int = 0, mlp_bias: bool = False, layers: int = LAYERS, vocab: int = VOCAB,
               hidden: int = HIDDEN, intermediate: int = INTERMEDIATE) -> LlamaForCausalLM:
    """A random tiny LlamaForCausalLM with a final norm whose weight is not all ones (so the norm matters)."""
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         tie_word_embeddings=False, mlp_bias=mlp_bias, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        parts = find_parts(model)
        parts.norm.weight.copy_(torch.rand(hidden) * 1.5 + 0.25)
        parts.lm_head.weight.mul_(40.0)  # logits of a few units, so one direction can take most of the probability
        for layer in parts.layers:
            layer.post_attention_layernorm.weight.copy_(torch.rand(hidden) * 1.5 + 0.25)
    return model


def unembedding_direction(model, token: int) -> torch.Tensor:
    """The residual direction whose logit-lens reading is W_U W_U[token]: lm_head row of `token` over the norm weight."""
    parts = find_parts(model)
    return parts.lm_head.weight[token].detach() / parts.norm.weight.detach()


def plant_writer(model, layer: int, neuron: int, token: int, scale: float = 1.0) -> None:
    """Set neuron's down_proj column to `scale` x the (norm-adjusted) unembedding direction of `token`."""
    parts = find_parts(model)
    d = unembedding_direction(model, token)
    with torch.no_grad():
        parts.layers[layer].mlp.down_proj.weight[:, neuron] = scale * d / d.norm()


def count_hooks(model) -> int:
    """Forward and forward-pre hooks on every module of `model`."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def prompts(n: int = 3, length: int = 6, vocab: int = VOCAB, seed: int = 0) -> list[dict]:
    """A few random token prompts as model inputs (batch size 1 each)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (1, length + i), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out
