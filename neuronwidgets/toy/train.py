"""Train the bundled toy LLaVA on the Shapes world, from scratch, deterministically, on CPU.

    python -m neuronwidgets.toy.train                        # the shipped recipe -> neuronwidgets/toy/weights
    python -m neuronwidgets.toy.train --out runs/toy --steps 500    # a quick experiment elsewhere
    python -m neuronwidgets.toy.train --no-save --json '{"attn_weight": 0}'

The model is a real `LlavaForConditionalGeneration` (tiny CLIP tower, tiny Llama). It is
taught to answer Shapes questions ("What color is the circle?" -> " red</s>") and to
describe the image ("Could you describe the image?" -> " a red circle above a blue
square</s>"); the language-model loss covers the answer tokens only, </s> included, so
greedy generation stops by itself. Two training-only signals make colour-shape binding
learnable in minutes (neither adds anything to the saved model):

* a per-patch head on the projected image features names each patch's colour and shape
  (the vision tower learns shapes at once instead of through the language model), and
* one attention head (layer `attn_layer`, head `attn_head`) at the answer position is told
  to look at the image token of the object the question is about. Without it the model
  answers "What color is the circle?" with the colour of an arbitrary object for
  thousands of steps: nothing else in the data teaches a lookup keyed by shape.

Training images are rendered once up front; every step draws a batch of (image,
question) pairs from a seeded generator, so a run is a function of its config (and, bit
for bit, of the machine's floating-point kernels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neuronwidgets.datasets.base import DESCRIBE_PROMPT
from neuronwidgets.datasets.shapes import (
    COLORS,
    SHAPES,
    SHAPES_WORDS,
    caption_for,
    questions_for,
    render,
    shapes,
)
from neuronwidgets.toy.build import build_model, build_processor

DEFAULT_OUT = Path(__file__).resolve().parent / "weights"
REFERENCE_FILE = "reference.safetensors"
TRAINING_FILE = "training.json"
EVAL_SEED = 12345


@dataclass
class TrainConfig:
    # world
    image_size: int = 64
    patch_size: int = 16
    n_train: int = 20000
    data_seed: int = 0
    # model
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    intermediate: int = 384
    seed: int = 0
    # optimisation
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    warmup: int = 150
    weight_decay: float = 0.01
    beta2: float = 0.98
    clip: float = 1.0
    caption_share: float = 0.3
    kind_weights: dict = field(default_factory=lambda: {"color": 2.0, "shape": 2.0, "count": 0.3, "position": 1.0})
    curriculum_steps: int = 0  # ramp the most objects per image from 1 to 3 over these steps (0: off)
    aux_weight: float = 1.0  # per-patch colour/shape loss on the projected image features (training-only head)
    aux_steps: int = 0  # apply the auxiliary loss for the first aux_steps steps only (0: all steps)
    aux_tied: bool = False  # aux classifier = the LM's input embeddings of the colour/shape words
    row_loss: bool = True  # average the loss per sequence first (a one-word answer weighs as much as a caption)
    attn_weight: float = 1.0  # supervise one attention head: the answer position looks at the asked-about object
    attn_layer: int = 2  # that head's decoder layer (negative: from the top); layer 1 never told circles from squares
    attn_head: int = 0
    attn_steps: int = 0  # supervise the first attn_steps steps only (0: all steps)
    # evaluation
    eval_seed: int = EVAL_SEED
    n_eval: int = 200
    eval_every: int = 1000  # held-out accuracy on 100 images every this many steps (0: only at the end)
    threads: int = 1  # torch threads: part of the recipe (another count may round differently)
    device: str = "cpu"


# --- tokens -----------------------------------------------------------------------


class Encoder:
    """Token ids for prompts (image token expanded) and answers, cached per string."""

    def __init__(self, processor, n_image_tokens: int):
        self.tok = processor.tokenizer
        self.n_image_tokens = n_image_tokens
        self.image_token = processor.image_token
        self.eos = self.tok.eos_token_id
        self._prompt: dict[str, list[int]] = {}
        self._answer: dict[tuple[str, str], list[int]] = {}

    def prompt(self, prompt: str) -> list[int]:
        ids = self._prompt.get(prompt)
        if ids is None:
            text = prompt.replace(self.image_token, self.image_token * self.n_image_tokens)
            ids = self._prompt[prompt] = self.tok(text)["input_ids"]
        return ids

    def answer(self, prompt: str, answer: str) -> list[int]:
        """The answer's ids (" answer" then </s>), checked to continue the prompt's ids."""
        key = (prompt, answer)
        ids = self._answer.get(key)
        if ids is None:
            p = self.prompt(prompt)
            text = prompt.replace(self.image_token, self.image_token * self.n_image_tokens)
            full = self.tok(text + " " + answer)["input_ids"]
            if full[: len(p)] != p:
                raise ValueError(f"answer {answer!r} changes the tokens of prompt {prompt!r}")
            ids = self._answer[key] = full[len(p) :] + [self.eos]
        return ids


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] normalised like the toy's CLIP processor (mean = std = 0.5)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# --- data --------------------------------------------------------------------------


class TrainData:
    """Rendered training images with every (prompt, answer) pair each one offers."""

    def __init__(self, cfg: TrainConfig, enc: Encoder):
        grid = cfg.image_size // cfg.patch_size
        n = cfg.n_train
        self.images = np.empty((n, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
        self.n_objects = np.empty(n, dtype=np.int64)
        self.patch_color = np.zeros((n, grid * grid), dtype=np.int64)  # 0: none, k: COLORS[k - 1]
        self.patch_shape = np.zeros((n, grid * grid), dtype=np.int64)  # 0: none, k: SHAPES[k - 1]
        color_names = list(COLORS)
        # items[i][kind] = [(prompt ids, answer ids, cell of the object asked about or -1)]
        self.items: list[dict[str, list[tuple[list[int], list[int], int]]]] = []
        for i in range(n):
            img, _, objects = render(cfg.data_seed, i, image_size=cfg.image_size, grid=grid)
            self.images[i] = img
            self.n_objects[i] = len(objects)
            for o in objects:
                self.patch_color[i, o.row * grid + o.col] = color_names.index(o.color) + 1
                self.patch_shape[i, o.row * grid + o.col] = SHAPES.index(o.shape) + 1
            by_kind: dict[str, list[tuple[list[int], list[int], int]]] = defaultdict(list)
            for qa in questions_for(objects, grid):
                # questions_for asks about the objects in reading order, one question per kind each
                k = len(by_kind[qa.kind])
                cell = objects[k].row * grid + objects[k].col if qa.kind in ("color", "shape", "position") else -1
                by_kind[qa.kind].append((enc.prompt(qa.prompt), enc.answer(qa.prompt, qa.answer), cell))
            cap = caption_for(objects)
            by_kind["caption"].append((enc.prompt(DESCRIBE_PROMPT), enc.answer(DESCRIBE_PROMPT, cap), -1))
            self.items.append(dict(by_kind))
        self.pixels = pixels(self.images)
        self.patch_color = torch.from_numpy(self.patch_color)
        self.patch_shape = torch.from_numpy(self.patch_shape)


def make_batch(data: TrainData, cfg: TrainConfig, gen: np.random.Generator, step: int, pad_id: int):
    """One batch: indices of images, padded ids, attention mask and loss mask (answer tokens)."""
    if cfg.curriculum_steps and step < cfg.curriculum_steps:
        most = 1 + int(3 * step / cfg.curriculum_steps)
        pool = np.flatnonzero(data.n_objects <= most)
    else:
        pool = None
    idx = gen.choice(pool, size=cfg.batch_size) if pool is not None else gen.integers(0, len(data.items), cfg.batch_size)
    kinds = list(cfg.kind_weights)
    w = np.asarray([cfg.kind_weights[k] for k in kinds], dtype=np.float64)
    w = w / w.sum() * (1 - cfg.caption_share)
    kinds = kinds + ["caption"]
    w = np.append(w, cfg.caption_share)
    seqs, answer_lens, cells = [], [], []
    for i in idx:
        kind = kinds[gen.choice(len(kinds), p=w)]
        options = data.items[i][kind]
        p, a, cell = options[gen.integers(0, len(options))]
        seqs.append(p + a)
        answer_lens.append(len(a))
        cells.append((len(p) - 1, cell))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)  # positions whose token is predicted
    for r, (s, la) in enumerate(zip(seqs, answer_lens)):
        ids[r, : len(s)] = torch.tensor(s)
        attn[r, : len(s)] = 1
        target[r, len(s) - la : len(s)] = True
    return torch.from_numpy(np.asarray(idx)), ids, attn, target, torch.tensor(cells)


def answer_loss(logits: torch.Tensor, ids: torch.Tensor, target: torch.Tensor, per_row: bool = True) -> torch.Tensor:
    """Cross-entropy over answer tokens (each predicted from the position before it).

    per_row: mean over each sequence's answer tokens, then over sequences; else over all tokens.
    """
    mask = target[:, 1:]
    pred = logits[:, :-1][mask]
    gold = ids[:, 1:][mask]
    losses = F.cross_entropy(pred.float(), gold, reduction="none")
    if not per_row:
        return losses.mean()
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
    counts = mask.sum(1).clamp(min=1)
    per = torch.zeros(mask.shape[0], device=losses.device).index_add(0, rows, losses) / counts
    return per.mean()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# --- greedy decoding and evaluation ----------------------------------------------


@torch.no_grad()
def greedy(model, processor, images, prompts, max_new_tokens: int = 4, batch_size: int = 64) -> list[str]:
    """Greedy answers (text only, special tokens dropped), batched by prompt length (no padding).

    A plain loop of full forward passes (no KV cache): for answers of a few tokens on this
    tiny model it is several times faster than `generate`, and it picks the same tokens.
    """
    tok = processor.tokenizer
    device = next(model.parameters()).device
    vision = model.config.vision_config
    n_img = (vision.image_size // vision.patch_size) ** 2
    enc = Encoder(processor, n_img)
    ids = [enc.prompt(p) for p in prompts]
    px = pixels(np.stack([np.asarray(im.convert("RGB")) for im in images]))
    groups: dict[int, list[int]] = defaultdict(list)
    for k, s in enumerate(ids):
        groups[len(s)].append(k)
    out: list[str] = [""] * len(prompts)
    eos = tok.eos_token_id
    for length, members in sorted(groups.items()):
        for b in range(0, len(members), batch_size):
            part = members[b : b + batch_size]
            seq = torch.tensor([ids[k] for k in part], device=device)
            pv = px[part].to(device)
            done = torch.zeros(len(part), dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                nxt = model(input_ids=seq, pixel_values=pv, use_cache=False).logits[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                done |= nxt == eos
                if bool(done.all()):
                    break
            for k, row in zip(part, seq[:, length:].tolist()):
                if eos in row:
                    row = row[: row.index(eos)]
                out[k] = tok.decode(row, skip_special_tokens=True).strip()
    return out


def evaluate(model, processor, samples, kinds=("color", "shape", "count", "position"), captions: bool = True) -> dict:
    """Exact-match accuracy per question kind (every question of every sample) and caption exact match."""
    was_training = model.training
    model.eval()
    images, prompts, answers, labels = [], [], [], []
    for s in samples:
        for qa in s.qa:
            if qa.kind in kinds:
                images.append(s.image)
                prompts.append(qa.prompt)
                answers.append(qa.answer)
                labels.append(qa.kind)
    got = greedy(model, processor, images, prompts, max_new_tokens=4)
    result: dict = {}
    for kind in kinds:
        hits = [g == a for g, a, k in zip(got, answers, labels) if k == kind]
        result[kind] = float(np.mean(hits)) if hits else float("nan")
    if captions:
        caps = greedy(model, processor, [s.image for s in samples], [s.prompt for s in samples], max_new_tokens=18)
        result["caption"] = float(np.mean([c == s.caption for c, s in zip(caps, samples)]))
    if was_training:
        model.train()
    return result


# --- the run ------------------------------------------------------------------------


def setup_determinism(cfg: TrainConfig) -> None:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    if cfg.device == "cpu":
        torch.use_deterministic_algorithms(True)
    else:  # pragma: no cover - GPU runs are for hyper-parameter sweeps only
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def reference_inputs(processor, n: int = 4):
    """A fixed batch (held-out images, the describe prompt) whose logits pin the shipped weights."""
    samples = shapes(n, seed=EVAL_SEED)
    enc = processor(images=[s.image for s in samples], text=[s.prompt for s in samples], return_tensors="pt")
    return {"input_ids": enc["input_ids"], "pixel_values": enc["pixel_values"]}


def train(cfg: TrainConfig, out: Path | None = None, log=print):
    """Train one model; returns (model, processor, report dict). Saves to `out` when given."""
    setup_determinism(cfg)
    t0 = time.time()
    grid = cfg.image_size // cfg.patch_size
    processor = build_processor(SHAPES_WORDS, image_size=cfg.image_size, patch_size=cfg.patch_size)
    model = build_model(
        processor,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_hidden=cfg.vision_hidden,
        vision_layers=cfg.vision_layers,
        vision_heads=cfg.vision_heads,
        text_hidden=cfg.text_hidden,
        text_layers=cfg.text_layers,
        text_heads=cfg.text_heads,
        intermediate=cfg.intermediate,
        seed=cfg.seed,
    ).to(cfg.device)
    n_params = sum(p.numel() for p in model.parameters())
    enc = Encoder(processor, grid * grid)
    data = TrainData(cfg, enc)
    held_out = shapes(cfg.n_eval, seed=cfg.eval_seed, image_size=cfg.image_size, grid=grid)
    log(f"model: {n_params / 1e6:.2f}M parameters; data ready in {time.time() - t0:.1f}s")

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, cfg.beta2),
    )
    # Training-only head: reads each image token's projected feature (the language model's
    # input at that position) and names the colour and the shape in that patch.
    aux_head = torch.nn.Linear(cfg.text_hidden, len(COLORS) + 1 + len(SHAPES) + 1).to(cfg.device)
    tok = processor.tokenizer
    color_ids = torch.tensor([tok.convert_tokens_to_ids("\u2581" + c) for c in COLORS], device=cfg.device)
    shape_ids = torch.tensor([tok.convert_tokens_to_ids("\u2581" + c) for c in SHAPES], device=cfg.device)
    embed = model.get_input_embeddings()
    features: dict[str, torch.Tensor] = {}
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, a, o: features.__setitem__("img", o))
    opt.add_param_group({"params": list(aux_head.parameters()), "weight_decay": 0.0})
    n_col = len(COLORS) + 1
    gen = np.random.default_rng([cfg.seed, 7])
    pad_id = processor.tokenizer.pad_token_id
    image_start = enc.prompt(DESCRIBE_PROMPT).index(model.config.image_token_id)
    history = []
    model.train()
    t_train = time.time()
    running = 0.0
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        idx, ids, attn, target, cells = make_batch(data, cfg, gen, step, pad_id)
        supervise = cfg.attn_weight > 0 and (not cfg.attn_steps or step < cfg.attn_steps)
        if supervise != (model.config.text_config._attn_implementation == "eager"):
            model.set_attn_implementation("eager" if supervise else "sdpa")
        outputs = model(
            input_ids=ids.to(cfg.device),
            attention_mask=attn.to(cfg.device),
            pixel_values=data.pixels[idx].to(cfg.device),
            use_cache=False,
            output_attentions=supervise,
        )
        logits = outputs.logits
        loss = answer_loss(logits, ids.to(cfg.device), target.to(cfg.device), per_row=cfg.row_loss)
        if supervise:
            rows = torch.nonzero(cells[:, 1] >= 0).flatten()
            if len(rows):
                att = outputs.attentions[cfg.attn_layer][rows, cfg.attn_head]  # [rows, T, T]
                pos = cells[rows, 0].to(cfg.device)
                key = image_start + cells[rows, 1].to(cfg.device)
                p_obj = att[torch.arange(len(rows), device=cfg.device), pos, key]
                loss = loss + cfg.attn_weight * -(p_obj + 1e-6).log().mean()
        if cfg.aux_weight and (not cfg.aux_steps or step < cfg.aux_steps):
            aux = aux_head(features["img"])
            if cfg.aux_tied:  # the patch feature should point along its words' embeddings
                f = features["img"]
                words = embed.weight[torch.cat([color_ids, shape_ids])]
                tied = f @ words.T
                aux = aux.clone()
                aux[..., 1:n_col] = tied[..., : len(COLORS)] + aux_head.bias[1:n_col]
                aux[..., n_col + 1 :] = tied[..., len(COLORS) :] + aux_head.bias[n_col + 1 :]
            aux_loss = F.cross_entropy(aux[..., :n_col].flatten(0, 1), data.patch_color[idx].flatten().to(cfg.device))
            aux_loss = aux_loss + F.cross_entropy(aux[..., n_col:].flatten(0, 1), data.patch_shape[idx].flatten().to(cfg.device))
            loss = loss + cfg.aux_weight * aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        running += loss.item()
        if (step + 1) % 100 == 0:
            log(f"step {step + 1:5d}  loss {running / 100:.4f}  lr {lr_at(step, cfg):.2e}  {time.time() - t_train:.0f}s")
            running = 0.0
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            acc = evaluate(model, processor, held_out[:100])
            history.append({"step": step + 1, **acc})
            log(f"  eval@{step + 1}: " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    train_seconds = time.time() - t_train
    hook.remove()
    model.set_attn_implementation("sdpa")  # what from_pretrained gives back
    model.eval()
    t_eval = time.time()
    acc = evaluate(model, processor, held_out)
    log("held-out: " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()) + f"  ({time.time() - t_eval:.0f}s)")
    report = {
        "config": dataclasses.asdict(cfg),
        "parameters": n_params,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "held_out": {"seed": cfg.eval_seed, "n": cfg.n_eval, **{k: round(v, 4) for k, v in acc.items()}},
        "history": history,
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "platform": platform.platform(),
        },
    }
    if out is not None:
        save(model, processor, Path(out), report)
    return model, processor, report


def save(model, processor, out: Path, report: dict) -> None:
    """save_pretrained (safetensors) + processor + reference logits + training.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").float().eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    ref = reference_inputs(processor)
    with torch.no_grad():
        logits = model(**ref).logits
    save_file(
        {"input_ids": ref["input_ids"].contiguous(), "pixel_values": ref["pixel_values"].contiguous(), "logits": logits.contiguous()},
        str(out / REFERENCE_FILE),
        metadata={"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__},
    )
    (out / TRAINING_FILE).write_text(json.dumps(report, indent=2) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the trained model (default: the shipped weights)")
    parser.add_argument("--no-save", action="store_true", help="train and evaluate only")
    parser.add_argument("--json", type=str, default=None, help="config overrides as JSON, e.g. '{\"steps\": 500}'")
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("int", "float", "str"):
            parser.add_argument("--" + f.name.replace("_", "-"), type={"int": int, "float": float, "str": str}[f.type], default=None)
    args = parser.parse_args(argv)
    overrides = json.loads(args.json) if args.json else {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            overrides[f.name] = v
    cfg = TrainConfig(**overrides)
    print("config:", json.dumps(dataclasses.asdict(cfg)))
    train(cfg, out=None if args.no_save else args.out)


if __name__ == "__main__":
    main()
