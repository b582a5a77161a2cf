"""Semi-nonnegative matrix factorisation (SNMF) of one layer's MLP activations into features.

A ~ F G^T, with A [n_neurons, n_tokens] the activations of one layer at the down_proj input
(site ``mlp_in``), F [n_neurons, k] sparse feature directions (winner-take-all per feature:
the top ``sparsity`` share of neurons by |value|, 1% by default) and G [n_tokens, k] >= 0
the features' coefficients on the tokens, fitted with the multiplicative updates of Ding,
Li & Jordan (2010) as in "Decomposing MLP Activations into Interpretable Features via
Semi-Nonnegative Matrix Factorization" (Shafran, Geiger, Geva, 2025):

    F <- A G (G^T G)^+, then sparsify each column of F
    G <- G * sqrt(((A^T F)^+ + G (F^T F)^-) / ((A^T F)^- + G (F^T F)^+))

One pass over the tokens per iteration, in blocks of ``chunk_tokens`` columns: the F update
needs only A G [n, k] and G^T G [k, k], accumulated block by block, and the reconstruction
error comes from the same products (||A||^2 - 2 <A^T F, G> + <F^T F, G^T G>), so A F G^T is
never formed. A may be a tensor, a numpy array (a memmap too) or a callable that yields
the same column blocks on every call (streaming from disk or from a model); only G
[n_tokens, k] is held whole. ``max_tokens`` fits on a seeded random subsample of columns.

The result's F has unit-norm columns, so G and :func:`coefficients` are in activation units
along each direction. No pickle: :meth:`SNMFResult.save` writes safetensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch

__all__ = ["SNMFResult", "fit_snmf", "coefficients", "feature_direction", "match_features", "sparsify"]

FORMAT = "neuronwidgets.snmf/1"
Activations = Union[torch.Tensor, np.ndarray, Callable[[], Iterable[Any]]]
_INITS = ("kmeans", "random")


# --------------------------------------------------------------------------- result


@dataclass
class SNMFResult:
    """A fitted factorisation: F [n_neurons, k] (unit columns), G [n_tokens, k] >= 0, errors per iteration."""

    F: torch.Tensor
    G: Optional[torch.Tensor]
    errors: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    token_index: Optional[torch.Tensor] = None  # columns of A used when max_tokens subsampled

    @property
    def k(self) -> int:
        """Number of features."""
        return int(self.F.shape[1])

    @property
    def n_neurons(self) -> int:
        """Number of neurons of the factorised layer."""
        return int(self.F.shape[0])

    @property
    def n_tokens(self) -> Optional[int]:
        """Number of tokens the fit saw (None when G was not kept)."""
        return None if self.G is None else int(self.G.shape[0])

    def digest(self, length: int = 12) -> str:
        """Short sha256 of F (shape and float32 bytes): names the feature set, e.g. in an index's site."""
        f = self.F.detach().to("cpu", torch.float32).contiguous()
        h = hashlib.sha256(f"{tuple(f.shape)}".encode())
        h.update(f.numpy().tobytes())
        return h.hexdigest()[:length]

    def feature_direction(self, j: int) -> torch.Tensor:
        """Unit direction of feature j in the neurons' space (the down_proj input)."""
        return feature_direction(self.F, j)

    def coefficients(self, A: Activations, **kwargs: Any) -> torch.Tensor:
        """Non-negative coefficients [n_tokens, k] of new activations A [n_neurons, n_tokens] on F."""
        return coefficients(self.F, A, **kwargs)

    def save(self, path: Union[str, Path], *, include_G: bool = True) -> Path:
        """Write F, G (optional), errors and params to one safetensors file (no pickle)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"F": self.F.detach().to("cpu", torch.float32).contiguous(),
                   "errors": torch.tensor(self.errors, dtype=torch.float64)}
        if include_G and self.G is not None:
            tensors["G"] = self.G.detach().to("cpu", torch.float32).contiguous()
        if self.token_index is not None:
            tensors["token_index"] = self.token_index.detach().to("cpu", torch.int64).contiguous()
        meta = {"format": FORMAT, "params": json.dumps(_jsonable(self.params), sort_keys=True)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: Union[str, Path], *, device: Union[str, torch.device] = "cpu") -> "SNMFResult":
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no SNMF file at {path}")
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not an SNMF result (format {meta.get('format')!r}, expected {FORMAT!r})")
            names = set(f.keys())
            if "F" not in names:
                raise ValueError(f"{path} holds no F")
            F = f.get_tensor("F")
            G = f.get_tensor("G") if "G" in names else None
            errors = f.get_tensor("errors").tolist() if "errors" in names else []
            token_index = f.get_tensor("token_index") if "token_index" in names else None
        if F.ndim != 2 or (G is not None and (G.ndim != 2 or G.shape[1] != F.shape[1])):
            raise ValueError(f"{path}: F {tuple(F.shape)} and G {None if G is None else tuple(G.shape)} do not fit")
        return cls(F=F, G=G, errors=[float(e) for e in errors], params=json.loads(meta.get("params", "{}")),
                   token_index=token_index)

    def __repr__(self) -> str:
        err = f"{self.errors[-1]:.4f}" if self.errors else "n/a"
        return (f"SNMFResult(k={self.k}, n_neurons={self.n_neurons}, n_tokens={self.n_tokens}, "
                f"iterations={len(self.errors)}, relative_error={err}, digest={self.digest()!r})")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --------------------------------------------------------------------------- blocks of A


class _Blocks:
    """Column blocks of A [n_neurons, n_tokens] as float32 tensors on the fitting device, same order every pass."""

    def __init__(self, A: Activations, *, chunk_tokens: int, device: torch.device,
                 token_index: Optional[np.ndarray]) -> None:
        self.device = device
        self.chunk = chunk_tokens
        self.token_index = token_index
        self.source = A
        if callable(A) and not isinstance(A, (torch.Tensor, np.ndarray)):
            if token_index is not None:
                raise ValueError("max_tokens needs A as a tensor or array; subsample the blocks of a streaming source yourself")
            self.n_neurons: Optional[int] = None
            self.n_tokens: Optional[int] = None
        else:
            if A.ndim != 2:
                raise ValueError(f"A must be 2-D [n_neurons, n_tokens], got shape {tuple(A.shape)}")
            self.n_neurons, total = int(A.shape[0]), int(A.shape[1])
            self.n_tokens = total if token_index is None else len(token_index)

    def _tensor(self, block: Any) -> torch.Tensor:
        if isinstance(block, np.ndarray):
            block = torch.from_numpy(np.ascontiguousarray(block) if block.strides[0] < 0 or block.strides[-1] < 0 else block)
        elif not isinstance(block, torch.Tensor):
            raise TypeError(f"an activation block must be a tensor or numpy array, got {type(block).__name__}")
        return block.to(self.device, torch.float32)

    def __iter__(self) -> Iterator[torch.Tensor]:
        A = self.source
        if callable(A) and not isinstance(A, (torch.Tensor, np.ndarray)):
            n = None
            for block in A():
                t = self._tensor(block)
                if t.ndim != 2:
                    raise ValueError(f"a streamed block must be 2-D [n_neurons, tokens], got shape {tuple(t.shape)}")
                if n is None:
                    n = t.shape[0]
                elif t.shape[0] != n:
                    raise ValueError(f"streamed blocks disagree on n_neurons ({n} vs {t.shape[0]})")
                if t.shape[1]:
                    yield t
            return
        total = self.n_tokens
        for start in range(0, total, self.chunk):
            stop = min(total, start + self.chunk)
            if self.token_index is None:
                block = A[:, start:stop]
            else:
                cols = self.token_index[start:stop]
                block = A[:, torch.from_numpy(cols).to(A.device)] if isinstance(A, torch.Tensor) else A[:, cols]
            yield self._tensor(block)


# --------------------------------------------------------------------------- helpers


def sparsify(F: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Winner-take-all per column: keep the ceil(sparsity * n) entries of largest |value|, zero the rest."""
    n = F.shape[0]
    keep = max(1, math.ceil(sparsity * n - 1e-9))
    if keep >= n:
        return F
    idx = torch.topk(F.abs(), keep, dim=0, sorted=False).indices
    mask = torch.zeros_like(F, dtype=torch.bool).scatter_(0, idx, True)
    return F * mask


def _pos(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0)


def _neg(x: torch.Tensor) -> torch.Tensor:
    return (-x).clamp_min(0)


class _Projector:
    """Computes A_b^T F for blocks, with a sparse F^T when F is sparse enough to pay."""

    def __init__(self, F: torch.Tensor, use_sparse: bool) -> None:
        self.F = F
        self.Ft = None
        if use_sparse:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.Ft = F.T.contiguous().to_sparse_csr()

    def __call__(self, block: torch.Tensor) -> torch.Tensor:
        if self.Ft is None:
            return block.T @ self.F
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (self.Ft @ block).T


def _solve_F(M: torch.Tensor, GtG: torch.Tensor, reg: float) -> torch.Tensor:
    """F = M (G^T G)^+ with a small ridge, in float64 (k x k)."""
    k = GtG.shape[0]
    g = GtG.double()
    ridge = reg * max(float(torch.diagonal(g).mean()), 1e-30)
    try:
        Ft = torch.linalg.solve(g + ridge * torch.eye(k, dtype=g.dtype, device=g.device), M.double().T)
    except RuntimeError:  # singular even with the ridge: fall back to the pseudo-inverse
        Ft = torch.linalg.pinv(g) @ M.double().T
    return Ft.T.to(torch.float32)


def _resolve_device(A: Activations, device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(A, torch.Tensor):
        return A.device
    return torch.device("cpu")


def _check_params(k: Any, sparsity: Any, max_iter: Any, tol: Any, max_tokens: Any, chunk_tokens: Any,
                  init: Any, patience: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k (the number of features) must be a positive integer, got {k!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (0 < float(sparsity) <= 1):
        raise ValueError(f"sparsity (the share of neurons kept per feature) must be in (0, 1], got {sparsity!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
    if max_tokens is not None and (not isinstance(max_tokens, (int, np.integer)) or max_tokens < 1):
        raise ValueError(f"max_tokens must be None or a positive integer, got {max_tokens!r}")
    if not isinstance(chunk_tokens, (int, np.integer)) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}")


# --------------------------------------------------------------------------- init


def _column_sq_norms(block: torch.Tensor, rows: int = 512) -> torch.Tensor:
    """Squared norm of every column, row band by row band (no block-sized temporary, no strided reduction)."""
    acc = torch.zeros(block.shape[1], dtype=torch.float32, device=block.device)
    for i in range(0, block.shape[0], rows):
        acc += block[i:i + rows].pow(2).sum(dim=0)
    return acc


def _sample_columns(blocks: _Blocks, m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass: a uniform sample of m columns [m, n] (smallest random keys), squared token norms [T], n_neurons."""
    keep_keys = torch.empty(0, dtype=torch.float64)
    keep_cols: Optional[torch.Tensor] = None
    norms: list[torch.Tensor] = []
    total, n = 0, None
    for block in blocks:
        n, t = block.shape
        sq = _column_sq_norms(block)
        if not bool(torch.isfinite(sq).all()) and not bool(torch.isfinite(block).all()):  # (a huge finite value squares to inf)
            raise ValueError(f"A holds NaN or infinite values (in tokens {total}..{total + t - 1})")
        norms.append(sq)
        keys = torch.cat([keep_keys, torch.rand(t, generator=gen, dtype=torch.float64)])
        sel = torch.topk(keys, min(m, keys.numel()), largest=False).indices
        old, new = sel[sel < keep_keys.numel()], sel[sel >= keep_keys.numel()] - keep_keys.numel()
        picked = block.index_select(1, new.to(block.device)).T  # a copy: the sample owns its columns
        keep_cols = picked if keep_cols is None else torch.cat([keep_cols[old.to(block.device)], picked])
        keep_keys = torch.cat([keep_keys[old], keys[sel[sel >= keep_keys.numel()]]])
        total += t
    if keep_cols is None or n is None:
        raise ValueError("A holds no tokens")
    return keep_cols, torch.cat(norms), n


def _kmeans_centres(X: torch.Tensor, k: int, gen: torch.Generator, n_iter: int = 10) -> torch.Tensor:
    """Spherical k-means (k-means++-style seeding, cosine) on rows of X [m, n]; returns unit centres [n, k]."""
    m = X.shape[0]
    Xn = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    first = int(torch.randint(m, (1,), generator=gen))
    centres = [Xn[first]]
    best = 1 - Xn @ Xn[first]  # cosine distance to the nearest centre
    per_round = max(1, math.ceil(k / 16))  # D^2 sampling, a few centres per pass over the sample
    while len(centres) < k:
        r = min(per_round, k - len(centres))
        w = best.clamp_min(0).double().cpu()
        if int((w > 0).sum()) >= r:
            idx = torch.multinomial(w, r, replacement=False, generator=gen)
        else:
            idx = torch.randint(m, (r,), generator=gen)
        new = Xn[idx.to(Xn.device)]
        centres.extend(new)
        best = torch.minimum(best, 1 - (Xn @ new.T).max(dim=1).values)
    C = torch.stack(centres, dim=1)  # [n, k]
    for _ in range(n_iter):
        sims = Xn @ C
        best_sim, labels = sims.max(dim=1)
        del sims
        onehot = torch.zeros(m, k, dtype=Xn.dtype, device=Xn.device)
        onehot[torch.arange(m, device=Xn.device), labels] = 1
        S = onehot.T @ Xn  # [k, n]: each cluster's sum (a matmul: index_add_ is slow on a CPU)
        counts = torch.bincount(labels, minlength=k)
        empty = counts == 0
        if bool(empty.any()):  # re-seed empty clusters at the worst-fitted points
            S[empty] = Xn[torch.argsort(best_sim)[: int(empty.sum())]]
        C = (S / S.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    return C.contiguous()


# --------------------------------------------------------------------------- fit


def _victims(F: torch.Tensor, dedup: float) -> list[int]:
    """Dead features and the weaker of each near-duplicate pair (|cos| > dedup)."""
    norms = F.norm(dim=0)
    alive = norms > 1e-6 * float(norms.max().clamp_min(1e-30))
    Fn = F / norms.clamp_min(1e-30)
    C = (Fn.T @ Fn).abs()
    C.fill_diagonal_(0)
    C[~alive] = 0
    C[:, ~alive] = 0
    victims = [int(j) for j in torch.nonzero(~alive).flatten()]
    taken = set(victims)
    for i, j in torch.nonzero(torch.triu(C > dedup)).tolist():
        if i in taken or j in taken:
            continue
        victims.append(i if norms[i] < norms[j] else j)
        taken.update((i, j))
    return victims


def _reseed(F: torch.Tensor, G: torch.Tensor, victims: list[int], residuals: torch.Tensor, sparsity: float) -> int:
    """Point the victims at the worst-reconstructed tokens' residuals (sparsified), in place; G restarts small."""
    victims = victims[: residuals.shape[1]]
    if not victims:
        return 0
    norms = F.norm(dim=0)
    keep = [j for j in range(F.shape[1]) if j not in set(victims)]
    target = float(norms[keep].median()) if keep else 1.0
    R = sparsify(residuals[:, : len(victims)], sparsity)
    F[:, victims] = R / R.norm(dim=0).clamp_min(1e-30) * target
    G[:, victims] = 1e-3 / math.sqrt(G.shape[0])
    return len(victims)


@torch.no_grad()
def fit_snmf(A: Activations, k: int, *, sparsity: float = 0.01, max_iter: int = 200, tol: float = 1e-4,
             patience: int = 3, init: str = "kmeans", seed: int = 0, max_tokens: Optional[int] = None,
             chunk_tokens: int = 8192, device: Optional[Union[str, torch.device]] = None, reg: float = 1e-6,
             init_tokens: int = 4096, sparse_matmul: Optional[bool] = None, keep_best: bool = True,
             reseed: bool = True, dedup: float = 0.9, reseed_every: int = 10, reseed_rounds: int = 5,
             verbose: bool = False) -> SNMFResult:
    """Fit A [n_neurons, n_tokens] ~ F G^T with sparse F [n_neurons, k] and G [n_tokens, k] >= 0 (semi-NMF).

    A: a tensor or numpy array [n_neurons, n_tokens] (pass X.T for activations X [tokens, neurons]),
    or a callable returning an iterable of [n_neurons, t] blocks, the same ones on every call.
    sparsity: share of neurons kept per feature (winner-take-all by |value|), in (0, 1].
    Stops when the relative reconstruction error ||A - F G^T|| / ||A|| changes by less than
    ``tol`` (relatively) ``patience`` iterations in a row, or after ``max_iter``.
    init: "kmeans" (spherical k-means on ``init_tokens`` sampled tokens) or "random"; seeded.
    max_tokens: fit on a seeded random subsample of that many tokens (columns).
    reseed: point dead features and the weaker of near-duplicate pairs (|cos| > dedup) at the
    worst-reconstructed tokens, every ``reseed_every`` iterations, at most ``reseed_rounds`` times,
    in the first half of ``max_iter`` (not in the paper: it rescues fits stuck with duplicates).
    """
    if isinstance(reseed_rounds, bool) or not isinstance(reseed_rounds, (int, np.integer)) or reseed_rounds < 0:
        raise ValueError(f"reseed_rounds must be an integer >= 0, got {reseed_rounds!r}")
    if not isinstance(reseed_every, (int, np.integer)) or reseed_every < 1:
        raise ValueError(f"reseed_every must be an integer >= 1, got {reseed_every!r}")
    _check_params(k, sparsity, max_iter, tol, max_tokens, chunk_tokens, init, patience)
    k, sparsity = int(k), float(sparsity)
    clock = time.perf_counter()
    dev = _resolve_device(A, device)
    gen = torch.Generator().manual_seed(int(seed))

    token_index = None
    if isinstance(A, (torch.Tensor, np.ndarray)):
        if A.ndim != 2:
            raise ValueError(f"A must be 2-D [n_neurons, n_tokens], got shape {tuple(A.shape)}")
        if max_tokens is not None and max_tokens < A.shape[1]:
            token_index = np.sort(torch.randperm(int(A.shape[1]), generator=gen)[: int(max_tokens)].numpy())
    elif not callable(A):
        raise TypeError(f"A must be a tensor, a numpy array or a callable yielding blocks, got {type(A).__name__}")
    elif max_tokens is not None:
        raise ValueError("max_tokens needs A as a tensor or array; subsample the blocks of a streaming source yourself")
    blocks = _Blocks(A, chunk_tokens=int(chunk_tokens), device=dev, token_index=token_index)

    # pass 0: count tokens, ||A||^2, a sample of tokens for the init
    sample, a2, n = _sample_columns(blocks, max(int(init_tokens), k), gen)
    T, norm2 = int(a2.numel()), float(a2.double().sum())
    if T < k:
        raise ValueError(f"k={k} features need at least {k} tokens, A has {T}")
    if norm2 <= 0:
        raise ValueError("A is all zeros: nothing to factorise")
    keep = max(1, math.ceil(sparsity * n - 1e-9))
    use_sparse = (keep <= 0.1 * n) if sparse_matmul is None else bool(sparse_matmul)

    # initial G (per block) and the products the first F update needs
    G = torch.empty(T, k, dtype=torch.float32, device=dev)
    M = torch.zeros(n, k, dtype=torch.float32, device=dev)
    GtG = torch.zeros(k, k, dtype=torch.float64, device=dev)
    C = _kmeans_centres(sample.to(dev), k, gen) if init == "kmeans" else None
    floor = 1e-3 * math.sqrt(norm2 / T)  # G entries never start at 0 (a multiplicative update keeps a 0)
    start = 0
    for block in blocks:
        t = block.shape[1]
        if C is not None:
            g = _pos(block.T @ C) + floor
        else:
            g = torch.rand(t, k, generator=gen).to(dev) + 1e-3
        G[start:start + t] = g
        M += block @ g
        GtG += (g.T @ g).double()
        start += t
    del sample, C

    init_s = time.perf_counter() - clock
    errors: list[float] = []
    best = (math.inf, None, None, 0)
    calm, stopped_early, reseeded, last_reseed, force, rounds = 0, False, 0, 0, False, 0
    reseed_until = int(max_iter) // 2 if reseed else 0
    n_worst = min(T, max(8, min(k, 64)))
    worst: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # residual norms [R] and vectors [n, R]
    F = torch.zeros(n, k, dtype=torch.float32, device=dev)
    for it in range(int(max_iter)):
        # F update, sparsify, then balance scales so that G's columns have unit norm
        F = sparsify(_solve_F(M, GtG, reg), sparsity)
        scale = torch.diagonal(GtG).sqrt().to(torch.float32).clamp_min(1e-12)
        F *= scale
        G /= scale
        if worst is not None and (it - last_reseed >= reseed_every or force):
            replaced = _reseed(F, G, _victims(F, dedup), worst[1], sparsity)
            if replaced:
                reseeded += replaced
                rounds += 1
                last_reseed, calm = it, 0
        force = False
        track = it < reseed_until and rounds < reseed_rounds
        worst = None
        Q = F.T @ F
        Qp, Qn = _pos(Q), _neg(Q)
        project = _Projector(F, use_sparse)
        M.zero_()
        GtG.zero_()
        cross = 0.0
        start = 0
        for block in blocks:
            t = block.shape[1]
            g = G[start:start + t]
            P = project(block)
            num = _pos(P) + g @ Qn
            den = _neg(P) + g @ Qp
            g = g * torch.sqrt(num / den.clamp_min(1e-30))
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0)
            G[start:start + t] = g
            pg = (P * g).sum(dim=1)
            cross += float(pg.double().sum())
            if track:  # the worst-reconstructed tokens and their residuals, to re-seed duplicate features
                res = a2[start:start + t] - 2 * pg + ((g @ Q) * g).sum(dim=1)
                top = torch.topk(res, min(n_worst, t)).indices
                vals, vecs = res[top], block[:, top] - F @ g[top].T
                if worst is not None:
                    vals, vecs = torch.cat([worst[0], vals]), torch.cat([worst[1], vecs], dim=1)
                    keep_idx = torch.topk(vals, min(n_worst, vals.numel())).indices
                    vals, vecs = vals[keep_idx], vecs[:, keep_idx]
                worst = (vals, vecs)
            M += block @ g
            GtG += (g.T @ g).double()
            start += t
        err2 = norm2 - 2 * cross + float((Q.double() * GtG).sum())
        err = math.sqrt(max(err2, 0.0) / norm2)
        errors.append(err)
        if verbose:
            print(f"snmf iteration {it + 1}: relative error {err:.6f}")
        if keep_best and err < best[0]:
            best = (err, F.clone(), G.clone(), it + 1)
        if it > 0:
            prev = errors[-2]
            change = abs(prev - err) / max(prev, 1e-30)
            calm = calm + 1 if change < tol else 0
            if err < 1e-7:
                stopped_early = True
                break
            if calm >= patience:
                if track and worst is not None and _victims(F, dedup):
                    force = True  # converged with duplicates left: re-seed them first
                else:
                    stopped_early = True
                    break
    if keep_best and best[1] is not None:
        _, F, G, best_iter = best
    else:
        best_iter = len(errors)

    # unit feature directions; coefficients carry the magnitude
    norms = F.norm(dim=0).clamp_min(1e-12)
    F = F / norms
    G = G * norms
    params = {"k": k, "sparsity": sparsity, "neurons_per_feature": keep, "max_iter": int(max_iter), "tol": float(tol),
              "patience": int(patience), "init": init, "seed": int(seed), "max_tokens": max_tokens,
              "n_tokens": T, "n_neurons": n, "iterations": len(errors), "best_iteration": best_iter,
              "stopped_early": stopped_early, "reg": float(reg), "device": str(dev),
              "reseeded": reseeded, "reseed_rounds": rounds, "dedup": float(dedup) if reseed else None,
              "dead_features": int((G.abs().sum(dim=0) == 0).sum()),
              "seconds": {"init": round(init_s, 3), "total": round(time.perf_counter() - clock, 3)}}
    return SNMFResult(F=F.contiguous(), G=G.contiguous(), errors=errors, params=params,
                      token_index=None if token_index is None else torch.from_numpy(token_index))


# --------------------------------------------------------------------------- NNLS coefficients


def _as_F(F: Union[torch.Tensor, SNMFResult, np.ndarray]) -> torch.Tensor:
    if isinstance(F, SNMFResult):
        F = F.F
    if isinstance(F, np.ndarray):
        F = torch.from_numpy(F)
    if not isinstance(F, torch.Tensor) or F.ndim != 2:
        raise ValueError(f"F must be a 2-D [n_neurons, k] tensor or an SNMFResult, got {type(F).__name__}")
    return F


@torch.no_grad()
def nnls_rows(Q: torch.Tensor, B: torch.Tensor, *, max_iter: int = 500, tol: float = 1e-6,
              x0: Optional[torch.Tensor] = None, lipschitz: Optional[float] = None,
              Q_pinv: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Solve min_x 0.5 x^T Q x - b^T x, x >= 0, for every row b of B [t, k] (accelerated projected gradient).

    lipschitz (the largest eigenvalue of Q) and Q_pinv may be given to skip computing them per call.
    """
    if B.shape[0] == 0:
        return B.clone()
    L = float(torch.linalg.eigvalsh(Q.double()).max()) if lipschitz is None else float(lipschitz)
    if L <= 0:
        return torch.zeros_like(B)
    if x0 is None:  # the unconstrained solution, clipped
        P = torch.linalg.pinv(Q.double()) if Q_pinv is None else Q_pinv
        x0 = _pos(B @ P.to(B.dtype))
    x = x0.clone()
    y, t_mom = x.clone(), 1.0
    scale = float(B.abs().max()) / L + 1e-30
    for _ in range(int(max_iter)):
        x_new = _pos(y - (y @ Q - B) / L)
        step = x_new - x
        if float(step.abs().max()) <= tol * scale:
            x = x_new
            break
        if float((step * (y - x_new)).sum()) > 0:  # gradient restart (O'Donoghue & Candes)
            t_mom, y = 1.0, x_new
        else:
            t_next = (1 + math.sqrt(1 + 4 * t_mom * t_mom)) / 2
            y = x_new + ((t_mom - 1) / t_next) * step
            t_mom = t_next
        x = x_new
    return x


@torch.no_grad()
def coefficients(F: Union[torch.Tensor, SNMFResult, np.ndarray], A: Activations, *, batch_tokens: int = 4096,
                 max_iter: int = 500, tol: float = 1e-6, device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Non-negative least squares of A [n_neurons, n_tokens] against F: G [n_tokens, k] >= 0 minimising ||A - F G^T||."""
    F = _as_F(F)
    if isinstance(A, np.ndarray):
        A = torch.from_numpy(A)
    if not isinstance(A, torch.Tensor) or A.ndim != 2:
        raise ValueError(f"A must be a 2-D [n_neurons, n_tokens] tensor or array, got {getattr(A, 'shape', type(A).__name__)}")
    if A.shape[0] != F.shape[0]:
        raise ValueError(f"A has {A.shape[0]} neurons, F has {F.shape[0]}: A must be [n_neurons, n_tokens]")
    if not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
    dev = torch.device(device) if device is not None else A.device
    Ff = F.to(dev, torch.float32)
    Q = Ff.T @ Ff
    L = float(torch.linalg.eigvalsh(Q.double()).max())
    P = torch.linalg.pinv(Q.double())
    out = torch.empty(A.shape[1], F.shape[1], dtype=torch.float32, device=dev)
    for s in range(0, A.shape[1], batch_tokens):
        block = A[:, s:s + batch_tokens].to(dev, torch.float32)
        out[s:s + block.shape[1]] = nnls_rows(Q, block.T @ Ff, max_iter=max_iter, tol=tol, lipschitz=L, Q_pinv=P)
    return out


# --------------------------------------------------------------------------- directions and matching


def feature_direction(F: Union[torch.Tensor, SNMFResult, np.ndarray], j: int, *, normalize: bool = True) -> torch.Tensor:
    """Column j of F as a float32 vector [n_neurons] (unit norm by default): a steering direction at mlp_in."""
    F = _as_F(F)
    if isinstance(j, bool) or not isinstance(j, (int, np.integer)) or not 0 <= int(j) < F.shape[1]:
        raise IndexError(f"feature {j!r} out of range: F has {F.shape[1]} features")
    v = F[:, int(j)].to(torch.float32).clone()
    if normalize:
        norm = v.norm()
        if float(norm) == 0:
            raise ValueError(f"feature {j} has a zero direction")
        v /= norm
    return v


def match_features(F_a: Union[torch.Tensor, np.ndarray], F_b: Union[torch.Tensor, np.ndarray],
                   *, signed: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair columns of F_a with columns of F_b by cosine (Hungarian with scipy, else greedy): rows, cols, cosines."""
    a = torch.as_tensor(F_a).double().cpu()
    b = torch.as_tensor(F_b).double().cpu()
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"F_a {tuple(a.shape)} and F_b {tuple(b.shape)} must be [n_neurons, k] with the same n_neurons")
    cos = (a / a.norm(dim=0).clamp_min(1e-12)).T @ (b / b.norm(dim=0).clamp_min(1e-12))
    sim = cos.numpy() if signed else np.abs(cos.numpy())
    try:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-sim)
    except ImportError:
        rows_l, cols_l = [], []
        order = np.dstack(np.unravel_index(np.argsort(-sim, axis=None), sim.shape))[0]
        used_r, used_c = set(), set()
        for r, c in order:
            if r in used_r or c in used_c:
                continue
            rows_l.append(r)
            cols_l.append(c)
            used_r.add(r)
            used_c.add(c)
            if len(rows_l) == min(sim.shape):
                break
        perm = np.argsort(rows_l)
        rows, cols = np.asarray(rows_l)[perm], np.asarray(cols_l)[perm]
    return rows, cols, sim[rows, cols]
