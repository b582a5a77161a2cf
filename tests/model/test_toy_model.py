"""The shipped toy LLaVA: loads offline, reproduces its training-time logits, answers Shapes
questions, and has findable colour, shape and word neurons (found by search, not by index)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from neuronwidgets.datasets.shapes import COLORS, SHAPES, SHAPES_WORDS, shapes
from neuronwidgets.toy import WEIGHTS_DIR, load_toy
from neuronwidgets.toy.train import (
    EVAL_SEED,
    REFERENCE_FILE,
    TRAINING_FILE,
    evaluate,
    reference_inputs,
)

# A freshly trained folder can be checked before it is shipped: NEURONWIDGETS_TOY_DIR=runs/toy pytest ...
TOY_DIR = Path(os.environ.get("NEURONWIDGETS_TOY_DIR", WEIGHTS_DIR))
N_HELD_OUT = 200


@pytest.fixture(scope="module")
def toy():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_toy(TOY_DIR)


@pytest.fixture(scope="module")
def held_out():
    return shapes(N_HELD_OUT, seed=EVAL_SEED)


def _grid(model) -> int:
    v = model.config.vision_config
    return v.image_size // v.patch_size


def test_weights_small_and_described():
    files = [p for p in TOY_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25e6
    names = {p.name for p in files}
    assert {"config.json", "model.safetensors", REFERENCE_FILE, TRAINING_FILE} <= names
    assert not any(p.suffix in (".bin", ".pt", ".pkl", ".pickle") for p in files)
    report = json.loads((TOY_DIR / TRAINING_FILE).read_text())
    assert report["held_out"]["seed"] == EVAL_SEED and "config" in report and report["train_seconds"] > 0


def test_loads_offline_with_its_tokenizer(toy):
    model, processor = toy
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not model.training and next(model.parameters()).dtype == torch.float32
    tok = processor.tokenizer
    # Every Shapes word is one token; anything else survives a round trip (byte fallback).
    for w in SHAPES_WORDS:
        assert len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1, w
    for text in ["a red circle above a blue square", "Zebra ünïcode ✓ 42!"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    # The <image> placeholder expands to one token per patch.
    grid = _grid(model)
    s = shapes(1, seed=EVAL_SEED)[0]
    enc = processor(images=s.image, text=s.qa[0].prompt, return_tensors="pt")
    image_id = model.config.image_token_id
    assert int((enc["input_ids"] == image_id).sum()) == grid * grid
    # AutoProcessor (what Session.from_pretrained uses) gives the same ids.
    from transformers import AutoProcessor

    auto = AutoProcessor.from_pretrained(str(TOY_DIR), local_files_only=True)
    assert torch.equal(auto(images=s.image, text=s.qa[0].prompt, return_tensors="pt")["input_ids"], enc["input_ids"])


def test_reference_logits_reproduced(toy):
    from safetensors import safe_open
    from safetensors.torch import load_file

    model, processor = toy
    ref = load_file(str(TOY_DIR / REFERENCE_FILE))
    with safe_open(str(TOY_DIR / REFERENCE_FILE), "pt") as f:
        meta = f.metadata() or {}
    # The processor still turns the reference images and prompts into the same inputs.
    again = reference_inputs(processor)
    assert torch.equal(again["input_ids"], ref["input_ids"])
    assert torch.equal(again["pixel_values"], ref["pixel_values"])
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"]).logits
    # Bit-exactness is not portable: two CPUs with the same capability string and torch version
    # (AVX512, 2.13.0+cpu) differed by up to 1.5e-5 in 61,605 of 75,504 logits, also on one thread.
    # The tolerance is ~10x that, and far below what would change an answer (the answers test).
    torch.testing.assert_close(logits, ref["logits"], rtol=1e-4, atol=1e-4)
    assert meta.get("torch"), "the reference file records the torch version it was made with"


@pytest.mark.slow
def test_answers_held_out_questions(toy, held_out):
    model, processor = toy
    acc = evaluate(model, processor, held_out)
    assert acc["color"] >= 0.9, acc
    assert acc["shape"] >= 0.9, acc
    assert acc["count"] >= 0.9, acc
    assert acc["caption"] >= 0.75, acc


def test_generate_stops_with_eos(toy, held_out):
    model, processor = toy
    s = held_out[0]
    enc = processor(images=s.image, text=s.prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert processor.tokenizer.eos_token_id in new  # it ends its caption by itself
    text = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert text.split()[0] == "a"


# --- neurons ----------------------------------------------------------------------------


def _record(model, processor, images, prompts):
    """act_fn(gate_proj(x)) of every decoder layer: float32 [batch, tokens, layers, neurons] and the ids."""
    layers = model.model.language_model.layers
    store: dict[int, torch.Tensor] = {}
    hooks = [
        layer.mlp.act_fn.register_forward_hook(lambda m, a, o, i=i: store.__setitem__(i, o.detach().float()))
        for i, layer in enumerate(layers)
    ]
    try:
        enc = processor(images=images, text=prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([store[i] for i in range(len(layers))], dim=2), enc


def _auroc(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """AUROC of every column of scores [n, k] for the boolean labels [n] (ties share ranks)."""
    n = scores.shape[0]
    order = scores.argsort(dim=0)
    ranks = torch.empty_like(scores)
    ranks.scatter_(0, order, torch.arange(1, n + 1, dtype=scores.dtype)[:, None].expand(n, scores.shape[1]).contiguous())
    # Average ranks over ties (activations that are exactly equal, e.g. zeros, must not win by order).
    sorted_vals = scores.gather(0, order)
    for col in range(scores.shape[1]):  # cheap: only columns with ties need fixing
        v = sorted_vals[:, col]
        if (v[1:] == v[:-1]).any():
            _, inverse, counts = torch.unique_consecutive(v, return_inverse=True, return_counts=True)
            ends = counts.cumsum(0).to(scores.dtype)
            mean_rank = ends - (counts.to(scores.dtype) - 1) / 2
            ranks[order[:, col], col] = mean_rank[inverse]
    n_pos = positive.sum()
    n_neg = n - n_pos
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.fixture(scope="module")
def patch_activations(toy, held_out):
    model, processor = toy
    grid = _grid(model)
    image_id = model.config.image_token_id
    acts, labels = [], {name: [] for name in list(COLORS) + list(SHAPES)}
    for start in range(0, len(held_out), 50):
        part = held_out[start : start + 50]
        a, enc = _record(model, processor, [s.image for s in part], [s.prompt for s in part])
        is_img = enc["input_ids"] == image_id
        acts.append(a[is_img])  # [batch * patches, layers, neurons], in reading order per image
        for s in part:
            pm = s.patch_masks(grid, grid)
            for name in labels:
                labels[name].append(torch.from_numpy(pm[name].reshape(-1)))
    acts = torch.cat(acts)
    return acts.reshape(acts.shape[0], -1), {k: torch.cat(v) for k, v in labels.items()}, acts.shape[1:]


@pytest.mark.slow
@pytest.mark.parametrize("concept", list(COLORS) + list(SHAPES))
def test_a_neuron_sees_each_concept(patch_activations, concept):
    acts, shares, (n_layers, n_neurons) = patch_activations
    share = shares[concept]
    keep = (share >= 0.15) | (share == 0)  # a whole shape sits in one patch; no partial patches exist
    positive = share[keep] >= 0.15
    assert positive.sum() >= 20
    auc = _auroc(acts[keep], positive)
    best = int(auc.argmax())
    layer, neuron = divmod(best, n_neurons)
    assert float(auc[best]) >= 0.9, f"{concept}: best AUROC {float(auc[best]):.3f} at layer {layer} neuron {neuron}"


def test_a_neuron_fires_on_one_word(toy, held_out):
    model, processor = toy
    samples = held_out[:100]
    texts = [s.prompt + " " + s.caption for s in samples]
    acts, enc = _record(model, processor, [s.image for s in samples], texts)
    ids = enc["input_ids"]
    text = (ids != model.config.image_token_id) & (enc["attention_mask"] == 1) & (ids != processor.tokenizer.bos_token_id)
    a = acts[text].reshape(int(text.sum()), -1)  # [text tokens, layers * neurons]
    tok_ids = ids[text]
    top = a.topk(30, dim=0).indices  # [30, neurons]
    top_ids = tok_ids[top]
    pure = (top_ids == top_ids[:1]).all(dim=0)  # all 30 strongest text tokens are the same word
    assert pure.any()
    # Among those neurons, one must also separate its word from every other text token.
    found = []
    for col in torch.nonzero(pure).flatten().tolist():
        word = int(top_ids[0, col])
        auc = float(_auroc(a[:, col : col + 1], tok_ids == word)[0])
        found.append((auc, processor.tokenizer.convert_ids_to_tokens(word), col))
    best = max(found)
    assert best[0] >= 0.95, best
