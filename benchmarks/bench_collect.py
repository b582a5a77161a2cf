"""Collection speed and memory against plain forward passes over the same batches, in one run.

    python benchmarks/bench_collect.py                      # CPU, the bundled toy model
    python benchmarks/bench_collect.py --llava7b-shape      # GPU: random LLaVA-1.5-7B-sized model, fp16

Prints: seconds for plain forward passes, for a collection of all layers (reductions on the
device), and, with --naive, for a hook that copies every activation to the host; their ratios;
peak memory; and the bytes on disk per neuron (measured, and at LLaVA-1.5's shape).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuronwidgets.datasets.base import Sample, SampleList  # noqa: E402
from neuronwidgets.session import Session  # noqa: E402


def toy_session() -> tuple[Session, str]:
    try:
        return Session.toy(), "toy"
    except Exception as err:  # the toy weights not built yet: a model of the same family and size
        from neuronwidgets.toy.build import build_model, build_processor

        p = build_processor(["a", "red", "circle", "blue", "square"], image_size=64, patch_size=8)
        return Session.from_model(build_model(p, text_layers=4, text_hidden=128, intermediate=384), p, name="tiny"), f"tiny random ({err})"


def llava7b_session(device: str) -> tuple[Session, str]:
    """A randomly initialised model with LLaVA-1.5-7B's shapes: CLIP ViT-L/14-336 + Llama-7B, fp16."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from neuronwidgets.toy.build import build_processor

    processor = build_processor(["a", "red", "circle", "blue", "square", "the", "image", "shows"], image_size=336, patch_size=14)
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       pad_token_id=processor.tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.float16)
    return Session.from_model(model.eval(), processor, name="random-llava-1.5-7b-shape"), "LLaVA-1.5-7B shape, random fp16"


def dataset(n: int, size: int) -> SampleList:
    try:
        if size == 0:
            from neuronwidgets.datasets.shapes import shapes

            return shapes(n=n, seed=0)
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    size = size or 64
    words = ["a red circle", "a blue square above a red circle", "the image shows a blue circle"]
    return SampleList([Sample(id=f"r{i}", image=Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)),
                              caption=words[i % 3]) for i in range(n)], fingerprint=f"random:{n}:{size}")


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def plain_pass(session, data, batch_size, naive=False):
    """Encode + forward over the same batches as collect (text='caption'), no reductions."""
    layers = list(range(session.n_layers)) if naive else []
    host = []

    def copy_to_host(layer, acts):  # the naive recorder: every activation to the host
        host.append(acts.float().cpu())

    t0 = time.perf_counter()
    for i in range(0, len(data), batch_size):
        items = [data[j] for j in range(i, min(i + batch_size, len(data)))]
        enc = [session.encode(s.get_image(), s.prompt, s.caption) for s in items]
        session.forward_record(enc, layers, on_activation=copy_to_host if naive else None)
        host.clear()
    sync(session.device)
    return time.perf_counter() - t0


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def llava_shape_bytes_per_neuron(top_k=50, map_k=30, random_k=10, max_text=64, n=512) -> dict:
    """Bytes per neuron of one saved layer at LLaVA-1.5's shape (576 patches), filled with random codes.

    Random codes are the worst case for size (nothing here is compressed, so it is also the
    exact size for any data); stats.parquet is counted at its raw column width.
    """
    from neuronwidgets.index import state_to_arrays
    from neuronwidgets.reduce import LayerState
    from safetensors.numpy import save_file

    out = {}
    for mk, rk in ((map_k, random_k), (map_k, 0), (top_k, random_k)):
        st = LayerState(n, 576, max_text, top_k, top_k, rk, 4)
        g = torch.Generator().manual_seed(0)
        for k in ("top_image_codes", "top_text_codes", "random_image_codes", "random_text_codes"):
            st.t[k] = torch.randint(0, 16, st.t[k].shape, generator=g, dtype=torch.uint8)
        arrays, stats = state_to_arrays(st, list(range(rk)), mk)
        with tempfile.TemporaryDirectory() as tmp:
            save_file(arrays, f"{tmp}/l.safetensors")
            size = os.path.getsize(f"{tmp}/l.safetensors") + sum(v.nbytes for v in stats.values())
        out[f"map_k={mk},random_k={rk}"] = size / n
    return out


def stream_pass(session, data, batch_size, top_k=50, random_k=10, max_text=64):
    """The collection's streaming part (collect's own per-batch code, all layers reduced on device)."""
    from neuronwidgets.collect import process_batch
    from neuronwidgets.index import RandomSet
    from neuronwidgets.reduce import LayerState

    rows, cols = session.grid
    layers = list(range(session.n_layers))
    state = {l: LayerState(session.n_neurons, rows * cols, max_text, top_k, top_k, random_k, 4, session.device) for l in layers}
    random = RandomSet(random_k, 0)
    t0 = time.perf_counter()
    for i in range(0, len(data), batch_size):
        process_batch(session, data, list(range(i, min(i + batch_size, len(data)))), layers, state, random, "caption", max_text)
    sync(session.device)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llava7b-shape", action="store_true")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive", action="store_true", help="also time a hook that copies every activation to the host")
    ap.add_argument("--end-to-end", action="store_true", help="also time session.collect() writing an index folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.llava7b_shape:
        session, what = llava7b_session(device)
        data = dataset(args.n, 336)
    else:
        session, what = toy_session()
        data = dataset(args.n, 0)
    print(f"model: {what}; {session}")
    print(f"data: {len(data)} images, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}", flush=True)
    warm = data[: args.batch_size]
    plain_pass(session, warm, args.batch_size)
    stream_pass(session, warm, args.batch_size)
    res = {"model": what, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "n": len(data), "batch_size": args.batch_size}
    plain, stream, naive = [], [], []
    for _ in range(args.repeats):  # interleaved, best of each: robust to a busy machine
        plain.append(plain_pass(session, data, args.batch_size))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        stream.append(stream_pass(session, data, args.batch_size))
        if device == "cuda":
            res["collect_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if args.naive:
            naive.append(plain_pass(session, data, args.batch_size, naive=True))
        print(f"  plain {plain[-1]:.3f}s  collect {stream[-1]:.3f}s" + (f"  naive {naive[-1]:.3f}s" if naive else ""), flush=True)
    res["plain_s"], res["collect_s"] = min(plain), min(stream)
    res["ratio_collect_vs_plain"] = res["collect_s"] / res["plain_s"]
    res["images_per_s_plain"] = len(data) / res["plain_s"]
    res["images_per_s_collect"] = len(data) / res["collect_s"]
    if naive:
        res["naive_s"] = min(naive)
        res["ratio_naive_vs_plain"] = res["naive_s"] / res["plain_s"]
        res["images_per_s_naive"] = len(data) / res["naive_s"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        plain_pass(session, warm, args.batch_size)
        res["plain_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            index = session.collect(data, path=Path(tmp) / "idx", text="caption", batch_size=args.batch_size, progress=False)
            res["end_to_end_collect_s"] = time.perf_counter() - t0
            res["disk_bytes_per_neuron"] = disk_bytes(Path(tmp) / "idx") / (len(index.layers) * index.n_neurons)
    res["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    res["llava_shape_bytes_per_neuron"] = llava_shape_bytes_per_neuron()
    for k, v in res.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
