"""LM-head decoding of every neuron at LLaVA-1.5-7B's LM vocabulary and MLP width: time per layer and peak memory.

    python benchmarks/bench_decode.py                    # 2 layers x 11008 neurons, vocab 32000, hidden 64, CPU
    python benchmarks/bench_decode.py --layers 4 --hidden 64 --json out.json

The model is a random LlamaForCausalLM built from a config with the real vocabulary (32000)
and MLP width (11008) but a tiny hidden width, so decoding's own work (the [neurons, vocab]
logits in chunks, two top-k per chunk, the table) is measured at its real size while the
matmul is 64x cheaper than at hidden 4096. The matmul's throughput at hidden 4096 is measured
on one chunk, for the extrapolation printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuronwidgets.decode import decode_neurons, find_parts  # noqa: E402
from neuronwidgets.decode.lm_head import chunk_rows  # noqa: E402


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class PeakRSS:
    """Sample the process's resident memory every 10 ms while the block runs."""

    def __enter__(self):
        self.peak, self._stop = rss_gib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_gib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gib())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    out: dict = {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate, "vocab": args.vocab,
                 "k": args.k, "threads": args.threads, "chunk_rows": chunk_rows(args.vocab, None)}
    out["rss_model_gib"] = round(rss_gib(), 3)

    with PeakRSS() as mem:
        t = time.perf_counter()
        dec = decode_neurons(model, k=args.k, kinds=["writes"])
        out["writes_only_s_per_layer"] = round((time.perf_counter() - t) / args.layers, 3)
    out["writes_only_peak_rss_gib"] = round(mem.peak, 3)
    del dec
    with PeakRSS() as mem:
        t = time.perf_counter()
        dec = decode_neurons(model, k=args.k)
        out["all_kinds_s_per_layer"] = round((time.perf_counter() - t) / args.layers, 3)
    out["all_kinds_peak_rss_gib"] = round(mem.peak, 3)
    out["rows"] = len(dec.frame)
    out["frame_mib"] = round(dec.frame.memory_usage(deep=True).sum() / 2**20, 1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = dec.save(tmp)
        out["save_s"] = round(time.perf_counter() - t, 3)
        out["parquet_mib"] = round(path.stat().st_size / 2**20, 2)
        t = time.perf_counter()
        type(dec).load(tmp)
        out["load_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    for n in range(200):
        dec.top_tokens(n % args.layers, n * 37 % args.intermediate)
    out["top_tokens_ms"] = round((time.perf_counter() - t) / 200 * 1000, 3)

    # one chunk of top-k alone, and the matmul at hidden 4096 on 256 rows, for the extrapolation
    parts = find_parts(model)
    rows = out["chunk_rows"]
    logits = torch.randn(rows, args.vocab)
    t = time.perf_counter()
    logits.topk(args.k, dim=1)
    logits.topk(args.k, dim=1, largest=False)
    out["topk_s_per_chunk"] = round(time.perf_counter() - t, 4)
    del logits
    w_u = torch.randn(args.vocab, 4096) * 0.02
    d = torch.randn(256, 4096)
    t = time.perf_counter()
    d @ w_u.T
    mm = time.perf_counter() - t
    out["matmul_gflops_at_4096"] = round(256 * 4096 * args.vocab * 2 / mm / 1e9, 1)
    del w_u, d, parts
    flops_7b = 32 * 3 * 11008 * 32000 * 4096 * 2
    n_chunks = -(-11008 // rows)
    topk_7b = 32 * 3 * n_chunks * out["topk_s_per_chunk"]
    out["extrapolated_7b_all_layers_cpu_s"] = round(flops_7b / (out["matmul_gflops_at_4096"] * 1e9) + topk_7b, 0)
    out["flops_7b_all_layers_all_kinds"] = flops_7b
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
