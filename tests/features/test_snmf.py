"""SNMF features: planted-feature recovery, constraints, NNLS coefficients, early stopping, save/load, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from neuronwidgets.features.snmf import SNMFResult, coefficients, feature_direction, fit_snmf, match_features, nnls_rows, sparsify

torch.set_num_threads(1)


def planted(n=300, k=10, T=3000, support=0.1, active=2, noise=0.01, seed=0):
    """A = F G^T + noise with sparse unit columns of F (mixed signs) and sparse G >= 0 (1..active features per token)."""
    g = torch.Generator().manual_seed(seed)
    m = int(round(support * n))
    F = torch.zeros(n, k)
    for j in range(k):
        F[torch.randperm(n, generator=g)[:m], j] = torch.randn(m, generator=g)
    F /= F.norm(dim=0)
    G = torch.zeros(T, k)
    for t in range(T):
        na = int(torch.randint(1, active + 1, (1,), generator=g))
        G[t, torch.randperm(k, generator=g)[:na]] = torch.rand(na, generator=g) * 2 + 0.5
    return F @ G.T + noise * torch.randn(n, T, generator=g), F, G


@pytest.fixture(scope="module")
def fitted():
    A, F, G = planted(seed=0)
    return A, F, G, fit_snmf(A, 10, sparsity=0.1, seed=0, max_iter=300, tol=1e-5)


@pytest.mark.parametrize("seed,init", [(0, "kmeans"), (1, "kmeans"), (2, "random")])
def test_recovers_planted_features(seed, init):
    A, F, G = planted(seed=seed)
    r = fit_snmf(A, 10, sparsity=0.1, seed=seed, init=init, max_iter=300, tol=1e-5)
    rows, cols, cos = match_features(F, r.F)
    assert len(rows) == 10 and len(set(cols.tolist())) == 10
    assert cos.min() > 0.95, cos
    # the coefficients of the matched features follow the planted ones
    corr = [np.corrcoef(G[:, i].numpy(), r.G[:, j].numpy())[0, 1] for i, j in zip(rows, cols)]
    assert min(corr) > 0.95
    assert r.errors[-1] < 0.1


def test_constraints(fitted):
    A, _, _, r = fitted
    assert r.F.dtype == torch.float32 and r.G.dtype == torch.float32
    assert r.F.shape == (300, 10) and r.G.shape == (3000, 10)
    assert bool((r.G >= 0).all())
    assert int((r.F != 0).sum(dim=0).max()) <= 30  # 10% of 300 neurons per feature
    torch.testing.assert_close(r.F.norm(dim=0), torch.ones(10))
    # the reported error is the real one (the fit never forms F G^T itself)
    err = float((A - r.F @ r.G.T).norm() / A.norm())
    best = r.params["best_iteration"]
    assert abs(err - r.errors[best - 1]) < 1e-4


@pytest.mark.parametrize("sparsity,init", [(0.01, "random"), (0.05, "kmeans"), (1.0, "kmeans")])
def test_g_nonnegative_and_sparsity_on_unstructured_data(sparsity, init):
    A = torch.randn(400, 500, generator=torch.Generator().manual_seed(3))  # mixed signs, no structure
    r = fit_snmf(A, 7, sparsity=sparsity, init=init, max_iter=40, seed=1)
    assert bool((r.G >= 0).all()) and bool(torch.isfinite(r.G).all()) and bool(torch.isfinite(r.F).all())
    keep = int(np.ceil(sparsity * 400))
    assert int((r.F != 0).sum(dim=0).max()) <= keep
    assert r.params["neurons_per_feature"] == keep


def test_sparsify_keeps_largest_magnitudes():
    F = torch.tensor([[1.0, -5.0], [-3.0, 0.5], [2.0, 4.0], [0.1, 0.2]])
    S = sparsify(F, 0.5)
    assert S.tolist() == [[0.0, -5.0], [-3.0, 0.0], [2.0, 4.0], [0.0, 0.0]]
    assert torch.equal(sparsify(F, 1.0), F)


def test_nnls_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    F = torch.randn(20, 3, generator=g)
    X = torch.randn(20, 60, generator=g)
    best = torch.full((60,), float("inf"))
    ref = torch.zeros(60, 3)
    for mask in itertools.product([0, 1], repeat=3):  # every active set: exact NNLS
        idx = [i for i in range(3) if mask[i]]
        x = torch.zeros(60, 3)
        if idx:
            x[:, idx] = torch.linalg.lstsq(F[:, idx], X).solution.T
        obj = ((X - F @ x.T) ** 2).sum(0)
        better = (x >= 0).all(1) & (obj < best)
        best[better], ref[better] = obj[better], x[better]
    got = coefficients(F, X, batch_tokens=7)  # several batches
    assert bool((got >= 0).all())
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nnls_rows(F.T @ F, X.T @ F), ref, atol=1e-4, rtol=1e-4)


def test_coefficients_match_fit_on_training_tokens(fitted):
    A, _, _, r = fitted
    C = r.coefficients(A)
    assert C.shape == r.G.shape and bool((C >= 0).all())
    assert float((C - r.G).norm() / r.G.norm()) < 0.05
    # numpy input, new tokens: non-negative and reconstructing as well as the fit does
    A_new, _, _ = planted(seed=0, T=200)  # same F_true (same seed), new draws of G on a shorter run
    C_new = coefficients(r.F, A_new.numpy())
    assert bool((C_new >= 0).all())
    assert float((A_new - r.F @ C_new.T).norm() / A_new.norm()) < 0.1


def test_early_stopping_stops():
    A, _, _ = planted(seed=4)
    r = fit_snmf(A, 10, sparsity=0.1, seed=0, max_iter=500, tol=1e-3, patience=2)
    assert r.params["stopped_early"] and len(r.errors) < 500
    changes = [abs(a - b) / a for a, b in zip(r.errors[-3:-1], r.errors[-2:])]
    assert all(c < 1e-3 for c in changes)
    r2 = fit_snmf(A, 10, sparsity=0.1, seed=0, max_iter=5, tol=0.0)
    assert len(r2.errors) == 5 and not r2.params["stopped_early"]


def test_seeded_and_streaming_equivalent():
    A, _, _ = planted(seed=5, T=1000)
    kw = dict(sparsity=0.1, seed=3, max_iter=20, chunk_tokens=256)
    r1 = fit_snmf(A, 6, **kw)
    r2 = fit_snmf(A.numpy().T.copy().T, 6, **kw)  # a numpy view [n, T] of a [T, n] array
    r3 = fit_snmf(lambda: (A[:, s:s + 256] for s in range(0, 1000, 256)), 6, **kw)
    for r in (r2, r3):
        torch.testing.assert_close(r.F, r1.F)
        torch.testing.assert_close(r.G, r1.G)
        assert r.errors == pytest.approx(r1.errors, rel=1e-5)
    assert r1.digest() == fit_snmf(A, 6, **kw).digest()
    assert r1.digest() != fit_snmf(A, 6, **{**kw, "seed": 4}).digest()


def test_max_tokens_subsample():
    A, F, _ = planted(seed=1, T=4000)
    r = fit_snmf(A, 10, sparsity=0.1, seed=0, max_tokens=1500, max_iter=300, tol=1e-5)
    assert r.G.shape == (1500, 10) and r.token_index.shape == (1500,)
    idx = r.token_index
    assert bool((idx[1:] > idx[:-1]).all()) and int(idx.max()) < 4000
    assert match_features(F, r.F)[2].min() > 0.95
    # the fit's G belongs to the sampled columns
    C = coefficients(r.F, A[:, idx])
    assert float((C - r.G).norm() / r.G.norm()) < 0.05


def test_save_load_roundtrip(tmp_path, fitted):
    _, _, _, r = fitted
    path = r.save(tmp_path / "feats.safetensors")
    back = SNMFResult.load(path)
    assert torch.equal(back.F, r.F) and torch.equal(back.G, r.G)
    assert back.errors == pytest.approx(r.errors) and back.params == r.params
    assert back.digest() == r.digest()
    slim = SNMFResult.load(r.save(tmp_path / "slim.safetensors", include_G=False))
    assert slim.G is None and slim.n_tokens is None and torch.equal(slim.F, r.F)
    assert "digest" in repr(back)
    with open(path, "rb") as fh:
        assert b"pickle" not in fh.read(200)
    from safetensors.torch import save_file

    save_file({"F": r.F}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an SNMF result"):
        SNMFResult.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        SNMFResult.load(tmp_path / "missing.safetensors")


def test_feature_direction(fitted):
    _, _, _, r = fitted
    v = feature_direction(r, 3)
    assert v.shape == (300,) and abs(float(v.norm()) - 1) < 1e-5
    assert torch.allclose(v, r.F[:, 3]) and torch.equal(r.feature_direction(3), v)
    raw = feature_direction(r.F * 2, 3, normalize=False)
    assert torch.allclose(raw, 2 * r.F[:, 3])
    with pytest.raises(IndexError, match="out of range"):
        feature_direction(r, 10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(k=0), "positive integer"), (dict(k=-3), "positive integer"), (dict(k=2.5), "positive integer"),
    (dict(k=3, sparsity=0), r"\(0, 1\]"), (dict(k=3, sparsity=1.5), r"\(0, 1\]"), (dict(k=3, sparsity=-0.1), r"\(0, 1\]"),
    (dict(k=3, max_iter=0), "max_iter"), (dict(k=3, init="svd"), "init"), (dict(k=3, max_tokens=0), "max_tokens"),
    (dict(k=3, tol=-1.0), "tol"), (dict(k=60), "at least 60 tokens"), (dict(k=3, reseed_rounds=-1), "reseed_rounds"),
    (dict(k=3, reseed_every=0), "reseed_every"), (dict(k=3, patience=0), "patience"),
])
def test_bad_parameters(kwargs, message):
    A = torch.randn(30, 50)
    with pytest.raises(ValueError, match=message):
        fit_snmf(A, **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        fit_snmf(torch.randn(3, 4, 5), 2)
    with pytest.raises(ValueError, match="NaN"):
        fit_snmf(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="all zeros"):
        fit_snmf(torch.zeros(4, 6), 2)
    with pytest.raises(TypeError, match="tensor, a numpy array or a callable"):
        fit_snmf([[1.0, 2.0]], 1)
    with pytest.raises(ValueError, match="max_tokens needs"):
        fit_snmf(lambda: iter([torch.randn(4, 6)]), 2, max_tokens=3)
    with pytest.raises(ValueError, match="neurons"):
        coefficients(torch.randn(5, 2), torch.randn(6, 3))
