"""SNMF fit time and peak memory at LLaVA-1.5-7B's MLP layer shape (11008 neurons at the down_proj input).

    python benchmarks/bench_snmf.py                          # 20k tokens, k in {100, 500}, 1 thread, CPU
    python benchmarks/bench_snmf.py --tokens 20000 --k 100 500 --iters 10 --threads 2
    python benchmarks/bench_snmf.py --k 100 --iters 300 --converge     # iterations until early stopping
    python benchmarks/bench_snmf.py --device cuda --tokens 200000 --k 500

Each k runs in its own process so that the peak memory is its own. The activations are
synthetic with a planted structure (300 sparse directions, up to 4 active per token, plus
noise of about half the signal's norm), built block by block; the fit runs a fixed number of iterations (tol=0) so that
seconds per iteration compare across k (--converge: until early stopping), then NNLS coefficients for one batch of new tokens
are timed. Prints one JSON line per k: seconds, seconds per iteration, peak RSS (and CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    """Resident memory now, MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic(n: int, T: int, n_true: int = 300, seed: int = 0):
    """A [n, T] float32 = F_true G_true^T + noise, F_true 1%-sparse, G_true >= 0 with 1-4 features per token."""
    import torch

    g = torch.Generator().manual_seed(seed)
    m = max(1, n // 100)
    F = torch.zeros(n, n_true)
    for j in range(n_true):
        F[torch.randperm(n, generator=g)[:m], j] = torch.randn(m, generator=g)
    F /= F.norm(dim=0)
    A = torch.empty(n, T)
    for s in range(0, T, 4096):
        t = min(4096, T - s)
        G = torch.zeros(t, n_true)
        rows = torch.arange(t).repeat_interleave(4)
        cols = torch.randint(n_true, (t * 4,), generator=g)
        vals = torch.rand(t * 4, generator=g) * (torch.rand(t * 4, generator=g) < 0.6)
        G.index_put_((rows, cols), vals, accumulate=True)
        A[:, s:s + t] = F @ G.T + 0.005 * torch.randn(n, t, generator=g)
    return A


def one(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from neuronwidgets.features.snmf import coefficients, fit_snmf

    A = synthetic(args.neurons, args.tokens)
    if args.device != "cpu":
        A = A.to(args.device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = rss_mb()
    t0 = time.perf_counter()
    tol = 1e-4 if args.converge else 0.0  # --converge: the default early stopping, --iters the most iterations
    r = fit_snmf(A, args.k[0], sparsity=0.01, max_iter=args.iters, tol=tol, seed=0, chunk_tokens=args.chunk)
    if args.device != "cpu":
        torch.cuda.synchronize()
    fit_s = time.perf_counter() - t0
    new = A[:, : args.nnls_tokens].clone()
    t1 = time.perf_counter()
    C = coefficients(r.F, new)
    if args.device != "cpu":
        torch.cuda.synchronize()
    nnls_s = time.perf_counter() - t1
    out = {"device": args.device, "threads": args.threads, "neurons": args.neurons, "tokens": args.tokens,
           "k": args.k[0], "iterations": len(r.errors), "stopped_early": r.params["stopped_early"], "fit_s": round(fit_s, 2),
           "init_s": r.params["seconds"]["init"],
           "s_per_iteration": round((fit_s - r.params["seconds"]["init"]) / len(r.errors), 3), "relative_error": round(r.errors[-1], 4),
           "nnls_tokens": args.nnls_tokens, "nnls_s": round(nnls_s, 3), "nnls_min": float(C.min()),
           "A_mb": round(A.numel() * 4 / 2**20), "rss_before_fit_mb": round(base),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if args.device != "cpu":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neurons", type=int, default=11008)
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--k", type=int, nargs="+", default=[100, 500])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--nnls-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--converge", action="store_true", help="stop early (tol=1e-4) instead of running --iters iterations")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for k in args.k:
        cmd = [sys.executable, __file__, "--child", "--k", str(k), "--neurons", str(args.neurons),
               "--tokens", str(args.tokens), "--iters", str(args.iters), "--chunk", str(args.chunk),
               "--nnls-tokens", str(args.nnls_tokens), "--threads", str(args.threads), "--device", args.device,
               *(["--converge"] if args.converge else [])]
        subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
