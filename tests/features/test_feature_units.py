"""SNMF features as units on the bundled toy: fit, collect an index of features, heatmaps, steering, clamping, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neuronwidgets as nw
from neuronwidgets.datasets.shapes import COLORS, SHAPES
from neuronwidgets.features import FEATURES_FILE, FeatureSession, FeatureSet, coefficients, fit_features, gather_activations

torch.set_num_threads(1)
LAYER, K = 1, 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    session = nw.Session.toy()
    data = nw.datasets.shapes(n=160, seed=0)
    feats = fit_features(session, data, LAYER, K, sparsity=0.05, max_iter=300)  # image patches and caption tokens
    fs = FeatureSession(session, feats)
    path = tmp_path_factory.mktemp("snmf") / "toy-snmf"
    index = fs.collect(data, path=path, text="caption", top_k=20, progress=False)
    return session, data, feats, fs, index


def purity(index, data, layer: int, feature: int, k: int = 20) -> tuple[str, float]:
    """The Shapes concept (a colour or a shape) most of the feature's top-k image patches touch (>= 15%), and that share."""
    rows, cols = index.grid
    ex = index.exemplars(layer, feature, modality="image", k=k)
    masks = [data[int(s)].patch_masks(rows, cols) for s in ex["sample"]]
    shares = {c: float(np.mean([m[c][r, q] >= 0.15 for m, r, q in zip(masks, ex["row"], ex["col"])]))
              for c in (*COLORS, *SHAPES)}
    best = max(shares, key=shares.get)
    return best, shares[best]


def test_features_have_pure_top_patches(world):
    _, data, _, _, index = world
    found = {j: purity(index, data, LAYER, j) for j in range(K)}
    pure = {j: c for j, (c, share) in found.items() if share >= 0.8}
    # chance: a random patch touches a given concept in a few % of cases
    assert len(pure) >= 8, found
    assert len(set(pure.values())) >= 4, found  # not one concept found many times


def test_index_of_features(world, tmp_path):
    session, data, feats, fs, index = world
    loaded = nw.NeuronIndex.load(index.path)
    assert loaded.site == feats.site == fs.site and feats.site.startswith("snmf-")
    assert loaded.n_neurons == K and loaded.layers == [LAYER] and loaded.model == session.name
    cats = loaded.categories()
    assert len(cats) == K and set(cats["neuron"]) == set(range(K))
    assert set(cats["category"]) <= {"visual", "text", "multi-modal", "inactive", "unactivated"}
    ex = loaded.exemplars(LAYER, 3, k=5)
    assert len(ex) == 5 and (ex["activation"].diff().dropna() <= 0).all()
    # the features file travels with the index, and names the same site
    assert (index.path / FEATURES_FILE).is_file()
    again = FeatureSet.load(loaded)
    assert again.site == feats.site and torch.equal(again.F(LAYER), feats.F(LAYER))
    assert FeatureSession.for_index(session, loaded).site == fs.site
    # a feature's index value is its NNLS coefficient on a plain trace of mlp_in (the reference)
    top = loaded.exemplars(LAYER, 3, modality="image", k=1).iloc[0]
    s = data[int(top["sample"])]
    plain = session.trace(s.image, s.prompt + " " + s.caption, site="mlp_in", layers=[LAYER])
    ref = coefficients(feats.F(LAYER), torch.from_numpy(plain.activations(LAYER)).T)[:, 3]
    img = plain.tokens[(plain.tokens["modality"] == "image")]
    at = img[(img["row"] == top["row"]) & (img["col"] == top["col"])].index[0]
    assert float(ref[at]) == pytest.approx(float(top["activation"]), rel=2e-2, abs=1e-3)


def test_trace_of_features_and_heatmaps(world):
    session, data, feats, fs, index = world
    s = data[3]
    tr = fs.trace(s.image, "USER: <image>\nWhat is the red shape? ASSISTANT:")
    plain = session.trace(s.image, "USER: <image>\nWhat is the red shape? ASSISTANT:", layers=[LAYER], site="mlp_in")
    assert tr.site == fs.site and tr.n_neurons == K and tr.layers == [LAYER]
    ref = coefficients(feats.F(LAYER), torch.from_numpy(plain.activations(LAYER)).T).numpy()
    np.testing.assert_allclose(tr.activations(LAYER), ref, rtol=1e-4, atol=1e-5)
    assert (tr.activations(LAYER) >= 0).all()
    assert tr.image_map(LAYER, 2).shape == tuple(session.grid)
    nw.PatchHeatmap(tr, layer=LAYER, neuron=2, index=index)
    nw.TokenHeatmap(tr, layer=LAYER, neuron=2, index=index)
    with pytest.raises(ValueError, match="different neurons"):  # neurons and features never mix silently
        nw.PatchHeatmap(plain, layer=LAYER, neuron=2, index=index)
    with pytest.raises(IndexError, match="no features"):
        fs.trace(s.image, s.prompt, layers=[0])
    with pytest.raises(ValueError, match="records its features"):
        fs.trace(s.image, s.prompt, site="act")


def test_explorer_and_concept_explanation(world):
    _, data, _, fs, index = world
    ex = nw.ConceptExplainer(data).explain(index, layer=LAYER, neuron=1)
    assert ex.layer == LAYER and ex.neuron == 1 and ex.text
    held = nw.datasets.shapes(n=24, seed=1)  # other images, the same features
    holdout = fs.collect(held, text="caption", top_k=8, progress=False)
    result = nw.score(ex, index, simulator=nw.ConceptSimulator(held), holdout=holdout)
    assert len(result.per_input) > 0 and np.isfinite(result.score) and -1.0 <= result.score <= 1.0
    explorer = nw.NeuronExplorer(fs, index, layer=LAYER, neuron=1, async_simulation=False)
    try:
        assert explorer.n_neurons == K and explorer.layers == [LAYER]
        assert explorer.patch_view
        view = explorer.clamp(4.0)  # the clamp slider sets a feature, not a neuron of another site
        assert explorer.clamp_view == view and view["after"]["top"] and isinstance(view["after"]["answer"], str)
    finally:
        explorer.close()


def test_steering_adds_the_direction(world):
    session, data, feats, fs, _ = world
    s = data[0]
    alpha, j = 3.0, 5
    before = session.trace(s.image, s.prompt, layers=[LAYER], site="mlp_in").activations(LAYER)
    with fs.steered({(LAYER, j): alpha}):
        after = session.trace(s.image, s.prompt, layers=[LAYER], site="mlp_in").activations(LAYER)
    np.testing.assert_allclose(after - before, np.broadcast_to(alpha * feats.direction(LAYER, j).numpy(), before.shape),
                               atol=1e-4)
    again = session.trace(s.image, s.prompt, layers=[LAYER], site="mlp_in").activations(LAYER)
    np.testing.assert_array_equal(again, before)  # the hook is gone after the block
    big = fs.generate(s.image, s.prompt, max_new_tokens=6, steer={(LAYER, j): 200.0})
    assert isinstance(big, str)
    with pytest.raises(IndexError, match="out of range"):
        fs.steered({(LAYER, K): 1.0})


def test_clamp_and_ablate_set_the_coefficient(world):
    _, data, _, fs, _ = world
    s = data[1]
    j = 4
    with fs.clamped({(LAYER, j): 3.0}):
        clamped = fs.trace(s.image, s.prompt).neuron(LAYER, j)
    np.testing.assert_allclose(clamped, 3.0, atol=1e-3)
    with fs.clamped(ablate=[(LAYER, j)]):
        ablated = fs.trace(s.image, s.prompt).neuron(LAYER, j)
    np.testing.assert_allclose(ablated, 0.0, atol=1e-3)
    for jj in range(0, K, 5):  # every feature, ablated or set high, reads its value on every token
        for v in (0.0, 5.0):
            with fs.clamped({(LAYER, jj): v}):
                np.testing.assert_allclose(fs.trace(s.image, s.prompt).neuron(LAYER, jj), v, atol=1e-3)
    free = fs.generate(s.image, s.prompt, max_new_tokens=4)
    assert free == fs.base.generate(s.image, s.prompt, max_new_tokens=4)


def test_decoding_of_features(world):
    session, _, feats, fs, _ = world
    dec = fs.decode(k=5)
    from neuronwidgets.decode.lm_head import find_parts, norm_scale

    parts = find_parts(session.model)
    W = parts.layers[LAYER].mlp.down_proj.weight.detach()
    for j in (0, 7):
        d = (W @ feats.F(LAYER)[:, j]) * norm_scale(parts.norm)
        logits = parts.lm_head.weight.detach() @ d
        expected = torch.topk(logits, 5).indices.tolist()
        assert dec.top_tokens(LAYER, j)["token_id"].tolist() == expected
    assert dec.meta["n_neurons"] == {str(LAYER): K}


def test_gather_and_errors(world):
    session, data, feats, _, _ = world
    acts, table = gather_activations(session, data[:4], [LAYER], text="prompt")
    assert acts[LAYER].shape == (len(table), session.n_neurons)
    assert set(table["modality"]) == {"image", "text"}
    assert "<s>" not in set(table["token"])  # special tokens are left out of the prompt's text
    with pytest.raises(ValueError, match="text must be"):
        gather_activations(session, data[:2], [LAYER], text="nope")
    with pytest.raises(ValueError, match="modalities"):
        gather_activations(session, data[:2], [LAYER], modalities=("audio",))
    small = FeatureSet({LAYER: feats.results[LAYER]})
    other = FeatureSet({0: feats.results[LAYER]})
    assert small.site == feats.site and other.site != feats.site  # the layer is part of the name
    with pytest.raises(ValueError, match="same number of features"):
        from neuronwidgets.features.snmf import SNMFResult

        FeatureSet({0: feats.results[LAYER], 1: SNMFResult(F=torch.randn(384, 3), G=None, errors=[])})
    with pytest.raises(ValueError, match="neurons"):
        from neuronwidgets.features.snmf import SNMFResult

        FeatureSession(session, FeatureSet({1: SNMFResult(F=torch.randn(10, 3), G=None, errors=[])}))
