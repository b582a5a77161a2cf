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
from neuronwidgets.model.session import Session  # noqa: E402


def toy_session() -> tuple[Session, str]:
    try:
        return Session.toy(), "toy"
    except Exception as err:  # the toy weights not built yet: a model of the same family and size
        from neuronwidgets.toy.build import build_model, build_processor

        p = build_processor(["a", "red", "circle", "blue", "square"], image_size=64, patch_size=8)
        return Session.from_model(build_model(p, text_layers=4, text_hidden=128, intermediate=384), p, name="tiny"), f"tiny random ({err})"


def llava7b_session(device: str) -> tuple[Session, str]:
    """A randomly initialised model with LLaVA-1.5-7B's shapes: CLIP ViT-L/14-336 + Llama-7B, fp16."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

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
        enc = session.encode_batch([s.get_image() for s in items], [s.prompt for s in items], [s.caption for s in items])
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
    from safetensors.numpy import save_file

    from neuronwidgets.reduce.state import LayerState
    from neuronwidgets.store.codec import state_to_arrays

    out = {}
    for mk, rk in ((map_k, random_k), (map_k, 0), (top_k, random_k)):
        st = LayerState(n, 576, max_text, top_k, top_k, rk, 4)
        g = torch.Generator().manual_seed(0)
        for k in ("top_image_codes", "top_text_codes", "random_image_codes", "random_text_codes"):
            st.t[k] = torch.randint(0, 256, st.t[k].shape, generator=g, dtype=torch.uint8)  # packed 4-bit codes
        arrays, stats = state_to_arrays(st, list(range(rk)), mk)
        with tempfile.TemporaryDirectory() as tmp:
            save_file(arrays, f"{tmp}/l.safetensors")
            size = os.path.getsize(f"{tmp}/l.safetensors") + sum(v.nbytes for v in stats.values())
        out[f"map_k={mk},random_k={rk}"] = size / n
    return out


def paired_pass(session, data, batch_size, top_k=50, random_k=10, max_text=64, reduce="auto", on_batch=None):
    """Plain passes and the collection's streaming part over the same batches, interleaved.

    Each batch is read and encoded once (timed on its own: both sides need it), then run plain
    (forward only), then through collect's own per-batch code (forward, all layers reduced on
    the device), back to back: a slow spell of a shared machine hits both sides alike, so their
    ratio is steadier than that of two separate passes. Returns seconds per batch: (encode,
    plain, collect).
    reduce: "auto" (what collect does: sparse on a CPU, dense on a GPU), or force "sparse" or
    "dense" (to compare the two designs on one device). on_batch(i) is called before the i-th batch.
    """
    from neuronwidgets.collect.hook import BatchReducer
    from neuronwidgets.collect.runner import prepare_batch, run_batch
    from neuronwidgets.reduce.random_set import RandomSet
    from neuronwidgets.reduce.state import LayerState

    rows, cols = session.grid
    state = {layer: LayerState(session.n_neurons, rows * cols, max_text, top_k, top_k, random_k, 4, session.device)
             for layer in range(session.n_layers)}
    if reduce != "auto":
        for st in state.values():
            st.set_design(sparse=reduce == "sparse", keep_dtype=st.keep_dtype)
    reducer = BatchReducer(state, batch_size)
    random = RandomSet(random_k, 0)
    encode, plain, collect = [], [], []
    for i in range(0, len(data), batch_size):
        batch = list(range(i, min(i + batch_size, len(data))))
        if on_batch is not None:
            on_batch(i // batch_size)
        t0 = time.perf_counter()
        prepared = prepare_batch(session, data, batch, "caption", max_text)
        t1 = time.perf_counter()
        session.forward_record(prepared.encoded, [], on_activation=None)
        sync(session.device)
        t2 = time.perf_counter()
        run_batch(session, prepared, reducer, random, "caption", max_text)
        sync(session.device)
        t3 = time.perf_counter()
        encode.append(t1 - t0)
        plain.append(t2 - t1)
        collect.append(t3 - t2)
    t0 = time.perf_counter()
    reducer.states()  # the candidates still buffered merged in: part of the work
    sync(session.device)
    collect[-1] += time.perf_counter() - t0
    return encode, plain, collect


def pad_malloc_top(mib: int) -> bool:
    """glibc only: keep `mib` MiB at the heap's top when it grows or shrinks (mallopt M_TOP_PAD). Off by default.

    It was meant to spare page faults (glibc may hand the heap's top back after a batch), but
    setting any mallopt turns off glibc's dynamic mmap threshold: every allocation of 128 KiB
    or more then gets fresh pages from the system (a 1 MiB torch.zeros: 330 us instead of 10).
    Measured on the toy (2048 images, 3 runs each): plain 592-609 img/s with it, 677-683
    without; forward-only ratio 1.35-1.37 with it, 1.31-1.35 without. A user's process runs
    glibc's defaults, so the benchmark does too unless asked.
    """
    if mib <= 0 or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-2, mib << 20))  # -2: M_TOP_PAD
    except (OSError, AttributeError):
        return False


def summarize(encode: list[list[float]], plain: list[list[float]], collect: list[list[float]], n_images: int, batch_size: int) -> dict:
    """Ratios of repeated paired passes (per-batch seconds): with the inputs' encoding on both sides
    (what a user waits for) and of the forward passes alone; over all batches, and after the first 256 images.

    The first batches are the dearest: until every neuron's top-k lists are full, every sample
    enters them. A dataset of thousands of images runs at the later rate.
    """
    later = 256 // batch_size
    runs = list(zip(encode, plain, collect))

    def ratio(first: int, with_encode: bool) -> float:
        return float(np.median([(sum(c[first:]) + with_encode * sum(e[first:])) / (sum(p[first:]) + with_encode * sum(e[first:]))
                                for e, p, c in runs]))

    res = {"encode_s": min(sum(e) for e in encode), "plain_s": min(sum(e) + sum(p) for e, p, _ in runs),
           "collect_s": min(sum(e) + sum(c) for e, _, c in runs)}
    # The median of the paired ratios: each compares batches run back to back.
    res["ratio_collect_vs_plain"] = ratio(0, True)
    res["ratio_forward_only"] = ratio(0, False)
    if len(plain[0]) > later:
        res["ratio_after_256_images"] = ratio(later, True)
        res["ratio_forward_only_after_256_images"] = ratio(later, False)
    res["images_per_s_plain"] = n_images / res["plain_s"]
    res["images_per_s_collect"] = n_images / res["collect_s"]
    return res


def profile_batch(session, data, batch_size, reduce: str) -> str:
    """A torch.profiler table of paired passes (plain and collected) over 4 batches, from the 9th on (kernels by device time on a GPU).

    paired_pass starts empty top-k lists, so the first 8 batches are run unprofiled first.
    """
    from torch.profiler import ProfilerActivity, profile

    if len(data) < 12 * batch_size:
        return f"(profile: needs {12 * batch_size} images)"
    gpu = torch.cuda.is_available()
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else []))
    paired_pass(session, data[: 12 * batch_size], batch_size, reduce=reduce, on_batch=lambda i: i == 8 and prof.start())
    prof.stop()
    return prof.key_averages().table(sort_by="device_time_total" if gpu else "self_cpu_time_total", row_limit=25, max_name_column_width=48)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llava7b-shape", action="store_true")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive", action="store_true", help="also time a hook that copies every activation to the host")
    ap.add_argument("--naive-n", type=int, default=64, help="images for the naive hook (it is slow)")
    ap.add_argument("--end-to-end", action="store_true", help="also time session.collect() writing an index folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--malloc-top-pad", type=int, default=0,
                    help="MiB for glibc's M_TOP_PAD (default 0: leave the allocator as a user's process has it)")
    ap.add_argument("--reduce", default="auto",
                    help="auto: as collect (sparse on a CPU, dense on a GPU), sparse or dense to force a design, "
                         "or several, comma-separated (dense,sparse) to compare them in one run")
    ap.add_argument("--profile", action="store_true", help="also print a profile of paired batches 9-12 (the top-k lists filled by then)")
    args = ap.parse_args()
    designs = args.reduce.split(",")
    if any(d not in ("auto", "sparse", "dense") for d in designs):
        ap.error(f"--reduce takes auto, sparse or dense (comma-separated), got {args.reduce!r}")
    padded = pad_malloc_top(args.malloc_top_pad)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.llava7b_shape:
        session, what = llava7b_session(device)
        data = dataset(args.n, 336)
    else:
        session, what = toy_session()
        data = dataset(args.n, 0)
    print(f"model: {what}; {session}")
    print(f"data: {len(data)} images, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}", flush=True)
    print(f"glibc M_TOP_PAD {args.malloc_top_pad} MiB: {'set' if padded else 'not set'}")
    warm = data[: args.batch_size]
    res = {"model": what, "reduce": args.reduce, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "n": len(data),
           "batch_size": args.batch_size, "malloc_top_pad_mib": args.malloc_top_pad if padded else 0}
    for design in designs:
        paired_pass(session, warm, args.batch_size, reduce=design)
        encode, plain, stream = [], [], []
        for _ in range(args.repeats):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            e, p, c = paired_pass(session, data, args.batch_size, reduce=design)
            encode.append(e)
            plain.append(p)
            stream.append(c)
            if device == "cuda":
                res[f"{design}_collect_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
            print(f"  {design}: encode {sum(e):.3f}s  forward: plain {sum(p):.3f}s  collect {sum(c):.3f}s  "
                  f"ratio {(sum(e) + sum(c)) / (sum(e) + sum(p)):.3f} ({sum(c) / sum(p):.3f} forward only)", flush=True)
        summary = summarize(encode, plain, stream, len(data), args.batch_size)
        res.update({k if len(designs) == 1 else f"{design}_{k}": v for k, v in summary.items()})
        if args.json:  # the figures so far, in case a later step fails
            Path(args.json).write_text(json.dumps(res, indent=2))
        if args.profile:
            print(f"profile of collected batches ({design}):")
            try:
                print(profile_batch(session, data, args.batch_size, design), flush=True)
            except Exception as err:  # a profile is an extra: it must not cost the figures
                print(f"(profile failed: {type(err).__name__}: {err})", flush=True)
    if args.naive:
        few = data[: args.naive_n]
        res["naive_n"] = len(few)
        res["naive_s"] = plain_pass(session, few, args.batch_size, naive=True)
        res["naive_plain_s"] = plain_pass(session, few, args.batch_size)
        res["ratio_naive_vs_plain"] = res["naive_s"] / res["naive_plain_s"]
        res["images_per_s_naive"] = len(few) / res["naive_s"]
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
