"""CPU speed of Session.trace for the VLM families, on random models built from configs (nothing downloaded).

    python benchmarks/bench_families.py                        # every family at its tiny test shape
    python benchmarks/bench_families.py --smolvlm-256m-shape   # SmolVLM-256M's shape (random weights, ~1 GB)
    python benchmarks/bench_families.py --qwen2-vl-2b-shape    # Qwen2-VL-2B's shape, measured on a few layers, scaled

Prints seconds per image for a trace of all layers (image processing, the forward pass, the host
copy of every neuron), median of --repeat runs, one thread by default (OMP_NUM_THREADS / --threads).
The full-size shapes come from the checkpoints' published configs; their weights are random, so the
time is the real model's (the same arithmetic) but the neurons mean nothing. Qwen2-VL-2B does not fit
this machine's memory budget in float32, so its time is measured on a model with fewer decoder layers
and vision blocks and scaled by layer count (each layer does the same work): an estimate, said so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuronwidgets.model.session import Session  # noqa: E402
from neuronwidgets.toy.families import FAMILIES, build_idefics3, build_qwen2_vl  # noqa: E402


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def time_trace(session: Session, image: Image.Image, repeat: int) -> dict:
    """Median seconds of session.trace over all layers (wall clock, and this process's CPU time: on a shared machine
    the wall clock includes waiting for a core), and the input's shape."""
    prompt = session.adapter.prompt_template.format(question="Could you describe the image?")
    trace = session.trace(image, prompt)  # warm-up
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        session.trace(image, prompt)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    n_image = int((trace.tokens["modality"] == "image").sum())
    return {"seconds": statistics.median(times), "cpu_seconds": statistics.median(cpu), "tokens": len(trace.tokens),
            "image_tokens": n_image, "grid": list(trace.grid), "layers": session.n_layers, "neurons": session.n_neurons}


def tiny(args) -> dict:
    out = {}
    for name, build in FAMILIES.items():
        try:
            model, processor = build()
        except ImportError as err:  # SmolVLM's processor needs num2words
            out[name] = {"skipped": str(err)}
            continue
        session = Session.from_model(model, processor, name=name)
        out[name] = time_trace(session, picture(640 // 10, 480 // 10), args.repeat)
        print(name, out[name], flush=True)
    return out


#: HuggingFaceTB/SmolVLM-256M-Instruct: SmolLM2-135M-like text model, SigLIP-B/16 at 512 px, pixel shuffle 4.
SMOLVLM_256M = dict(text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                              max_position_embeddings=8192),
                    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                    tile=512, patch=16, scale=4, longest_edge=2048)


def smolvlm(args) -> dict:
    shape = SMOLVLM_256M
    model, processor = build_idefics3("smolvlm", tile=shape["tile"], patch=shape["patch"], scale=shape["scale"],
                                      longest_edge=shape["longest_edge"], text=shape["text"], vision=shape["vision"])
    session = Session.from_model(model, processor, name="smolvlm-256m-shape")
    out = {"params": sum(p.numel() for p in model.parameters())}
    image = picture(640, 480)
    session.adapter.processor_kwargs = {"do_image_splitting": False}
    out["global view only (do_image_splitting=False)"] = time_trace(session, image, args.repeat)
    print(out, flush=True)
    session.adapter.processor_kwargs = {}
    out["default splitting, 640x480"] = time_trace(session, image, max(1, args.repeat // 2))
    print(out, flush=True)
    return out


#: Qwen/Qwen2-VL-2B-Instruct: a Qwen2-1.5B text model, a 32-block ViT (1280 wide), patches of 14 px merged 2x2.
QWEN2_VL_2B = dict(text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                             max_position_embeddings=32768),
                   vision=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, patch_size=14))


def qwen(args) -> dict:
    """Time at two depths (text layers / vision blocks), then the real depth by the per-layer difference."""
    full_text, full_vision = QWEN2_VL_2B["text"]["num_hidden_layers"], QWEN2_VL_2B["vision"]["depth"]
    image = picture(640, 480)
    runs = {}
    for text_layers, blocks in ((1, 1), (3, 1), (1, 3)):
        model, processor = build_qwen2_vl("2", patch=14, min_pixels=56 * 56, max_pixels=28 * 28 * 1280,
                                          text={**QWEN2_VL_2B["text"], "num_hidden_layers": text_layers},
                                          vision={**QWEN2_VL_2B["vision"], "depth": blocks})
        session = Session.from_model(model, processor, name="qwen2-vl-2b-shape")
        runs[(text_layers, blocks)] = time_trace(session, image, args.repeat)
        print((text_layers, blocks), runs[(text_layers, blocks)], flush=True)
        del model, session
    out = {"measured": {f"{t} text layers, {b} vision blocks": r for (t, b), r in runs.items()}}
    for key in ("seconds", "cpu_seconds"):
        base = runs[(1, 1)][key]
        per_text = (runs[(3, 1)][key] - base) / 2
        per_block = (runs[(1, 3)][key] - base) / 2
        out[f"{key} per text layer"], out[f"{key} per vision block"] = per_text, per_block
        estimate = base + per_text * (full_text - 1) + per_block * (full_vision - 1)
        out[f"estimated {key} per image at 28 text layers and 32 vision blocks"] = estimate
    return {**out,
            "image_tokens": runs[(1, 1)]["image_tokens"], "grid": runs[(1, 1)]["grid"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smolvlm-256m-shape", action="store_true")
    parser.add_argument("--qwen2-vl-2b-shape", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smolvlm_256m_shape:
        result = {"smolvlm-256m-shape": smolvlm(args)}
    elif args.qwen2_vl_2b_shape:
        result = {"qwen2-vl-2b-shape": qwen(args)}
    else:
        result = {"tiny": tiny(args)}
    result["threads"] = args.threads
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
