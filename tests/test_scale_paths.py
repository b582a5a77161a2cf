"""The paths that make an index of LLaVA-1.5-7B's size usable, checked on small shapes against slow references.

Categories from the stored code histograms (and from maps, for the best map_k) against a
brute force over every top sample's map; the categories cache; one neuron's category; the
concept explanation against the whole-table path; the fast histogram of packed codes; and a
collection in passes over groups of layers against one pass.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import neuronwidgets as nw
from neuronwidgets import categorize as cz
from neuronwidgets.constants import LABELS
from neuronwidgets.records import discretize
from neuronwidgets.reduce.codes import code_histogram, map_codes, store_codes, stored_code_histogram


@pytest.fixture(scope="module")
def toy():
    return nw.Session.toy()


@pytest.fixture(scope="module")
def data():
    return nw.datasets.shapes(n=64, seed=0)


@pytest.fixture(scope="module")
def full_maps(toy, data, tmp_path_factory):
    """Every top sample's map kept: what the brute force reads."""
    return toy.collect(data, top_k=10, map_k=None, path=tmp_path_factory.mktemp("full") / "idx", progress=False)


@pytest.fixture(scope="module")
def index(toy, data, tmp_path_factory):
    """Maps for the best 3 of 10 top samples, histograms for all: what the categories read."""
    return toy.collect(data, top_k=10, map_k=3, path=tmp_path_factory.mktemp("few") / "idx", progress=False)


# --- references ----------------------------------------------------------------------------------
def brute_force_categories(index, top_n=None, vt=2, vmin=None, tt=3, tmin=2) -> pd.DataFrame:
    """The paper rule neuron by neuron, sample by sample, from the maps themselves (an index with every map kept).

    vmin None: the paper's share of the grid, each top sample's own main grid where the grid varies per sample."""
    m = index.manifest
    q = (1 << m["map_bits"]) - 1
    top_n = top_n or index.top_k

    def min_patches(sample: int) -> int:
        if vmin is not None:
            return vmin
        rows, cols = index.grid_of(sample)
        return cz.paper_min_patches(rows * cols)
    stats = index.stats()
    rows = []
    for layer in index.layers:
        arrays = index._layer(layer)
        assert arrays["top_image_codes"].shape[1] == index.top_k, "the reference needs every map"
        images = map_codes(arrays["top_image_codes"], m["n_patches"], m["map_bits"])
        texts = map_codes(arrays["top_text_codes"], m["max_text_tokens"], m["map_bits"])
        st = stats[stats.layer == layer].sort_values("neuron")
        for neuron in range(index.n_neurons):
            gmax = float(st["max"].iloc[neuron])
            counts = dict.fromkeys(LABELS, 0)
            for s in range(top_n):
                if arrays["top_sample"][neuron, s] < 0:
                    continue
                scale = max(float(arrays["top_value"][neuron, s]), 0.0) / q
                img = discretize(images[neuron, s].astype(np.float64) * scale, gmax)
                txt = discretize(texts[neuron, s].astype(np.float64) * scale, gmax)
                label = cz.sample_labels(img, txt, visual_threshold=vt, visual_min_patches=min_patches(arrays["top_sample"][neuron, s]),
                                         text_threshold=tt, text_min_tokens=tmin)
                counts[str(label)] += 1
            best = max(LABELS, key=lambda lab: (counts[lab], -LABELS.index(lab)))  # ties: the earlier label
            rows.append({"layer": layer, "neuron": neuron, "category": best if gmax > 0 else "inactive",
                         **{f"n_{lab.replace('-', '')}": counts[lab] for lab in LABELS}})
    return pd.DataFrame(rows)


def brute_force_image_share(index, top_n=None) -> np.ndarray:
    """Share of image tokens among each neuron's top_n token exemplars, by merging the two lists in Python."""
    top_n = top_n or index.top_k
    out = []
    for layer in index.layers:
        a = index._layer(layer)
        for neuron in range(index.n_neurons):
            tokens = []
            for kind, m in enumerate(("image", "text")):
                values, samples = a[f"tok_{m}_value"][neuron], a[f"tok_{m}_sample"][neuron]
                tokens += [(float(v), kind, i) for i, (v, s) in enumerate(zip(values, samples)) if s >= 0]
            tokens.sort(key=lambda t: (-t[0], t[1], t[2]))  # value first; ties: image first, then list order
            picked = tokens[:top_n]
            out.append(sum(t[1] == 0 for t in picked) / max(len(picked), 1))
    return np.asarray(out)


# --- categories ------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{}, {"top_n": 4}, {"visual_threshold": 0, "text_threshold": 9},
                                    {"visual_threshold": 6.5, "visual_min_patches": 2, "text_min_tokens": 1}])
def test_fast_categories_equal_the_brute_force(index, full_maps, params):
    top_n, vt, tt = params.get("top_n"), params.get("visual_threshold", 2), params.get("text_threshold", 3)
    expected = brute_force_categories(full_maps, top_n, vt, params.get("visual_min_patches"), tt, params.get("text_min_tokens", 2))
    for idx in (index, full_maps):  # from the stored histograms (map_k=3), and with every map kept
        got = cz.categorize(idx, **params)
        pd.testing.assert_frame_equal(got[expected.columns].reset_index(drop=True), expected, check_dtype=False)
    np.testing.assert_allclose(cz.categorize(index, **params)["image_share"], brute_force_image_share(full_maps, top_n))


@pytest.fixture(scope="module")
def variable():
    """A tiny Qwen2-VL whose grids run from 2x4 to 20x20 patches (paper thresholds 1 to 3): full maps, and maps for 2 of 6."""
    from PIL import Image

    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.toy.families import build_qwen2_vl

    torch.set_num_threads(1)
    session = nw.Session.from_model(*build_qwen2_vl(max_pixels=16 * 16 * 400), name="tiny-qwen2-vl-400")
    prompt = session.adapter.prompt_template.format(question="what is the red shape?")
    sizes = [(320, 320), (224, 256), (64, 40), (240, 160), (48, 48), (304, 288)]  # (w, h): 20x20, 16x14, 2x4, 10x15, 3x3, 18x19
    data = [Sample(id=f"s{i}", image=Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)),
                   prompt=prompt, caption="a red circle") for i, (w, h) in enumerate(sizes * 2)]
    kw = dict(top_k=6, text="caption", batch_size=4, progress=False)
    return session.collect(data, map_k=None, **kw), session.collect(data, map_k=2, **kw)


@pytest.mark.parametrize("params", [{}, {"visual_threshold": 5}, {"visual_threshold": 7, "top_n": 4},
                                    {"visual_threshold": 7, "visual_min_patches": 2}, {"visual_threshold": 8, "visual_min_patches": 1}])
def test_a_varying_grid_takes_each_top_samples_own_threshold(variable, params):
    full, few = variable
    n_patches = full.manifest["n_patches"]
    assert full.manifest["grid"] is None and n_patches == 400
    own = [cz.paper_min_patches(r * c) for r, c in zip(full.samples["grid_rows"], full.samples["grid_cols"])]
    assert sorted(set(own)) == [1, 2, 3] and cz.sample_min_patches(full)[full.samples["sample"]].tolist() == own
    vt, vmin, top_n = params.get("visual_threshold", 2), params.get("visual_min_patches"), params.get("top_n")
    expected = brute_force_categories(full, top_n, vt, vmin)  # a number given: every sample's threshold
    for idx in (few, full):  # from the stored histograms, and with every map kept
        got = cz.categorize(idx, **params)
        pd.testing.assert_frame_equal(got[expected.columns].reset_index(drop=True), expected, check_dtype=False)
        for layer, neuron in [(full.layers[-1], 0), (full.layers[0], 5)]:
            want = got[(got.layer == layer) & (got.neuron == neuron)]["category"].iloc[0]
            assert cz.neuron_category(idx, layer, neuron, **params) == want
    if vmin is None and vt >= 5:  # the padded width's threshold for all would count otherwise here
        assert not brute_force_categories(full, top_n, vt, cz.paper_min_patches(n_patches)).equals(expected)


def test_a_varying_grids_share_base_rate_counts_real_image_tokens(variable):
    full, _ = variable
    st = full.stats()
    real = int(full.samples["n_image_tokens"].sum())
    assert real < len(full.samples) * full.manifest["n_patches"]  # the padding is not counted
    np.testing.assert_array_equal(st["image_count"], real)
    share = cz.categorize(full, "share")
    np.testing.assert_allclose(share["image_base_rate"], real / (real + st["text_count"].to_numpy()))


def test_files_keep_a_histogram_for_every_top_sample(index):
    arrays = index._layer(index.layers[0])
    assert arrays["top_image_hist"].shape[:2] == (index.n_neurons, index.top_k)
    assert arrays["top_image_codes"].shape[1] == 3
    kept = stored_code_histogram(torch.from_numpy(arrays["top_image_codes"]), index.manifest["n_patches"], 4).numpy()
    np.testing.assert_array_equal(arrays["top_image_hist"][:, :3], kept)  # the kept maps' own histograms


def test_first_code_above_is_exact_at_every_edge():
    rng = np.random.default_rng(0)
    q = 15
    gmax = np.concatenate([rng.uniform(0.1, 5, 200), [0.0, -1.0, np.inf, np.nan, 1.0, 1.0, 3.0, 1e-300, 1e300]])[:, None]
    value = np.concatenate([rng.uniform(0, 1, (209, 6)) * np.abs(np.nan_to_num(gmax, posinf=1.0)),
                            np.array([[1.0, 0.0, np.nan, np.inf, 0.3, 0.7]] * 209)], 1)
    value[204, :6] = [1.0, 1 / 3, 2 / 3, 0.1, 0.2, 0.3]  # exact multiples: estimates land on a boundary
    scale = np.maximum(value, 0.0) / q
    codes = np.arange(1, q + 1, dtype=np.float64)
    for threshold in (0, 1, 2, 3, 2.5, 7, 9, 9.99, 10, 12):
        levels = discretize(codes * scale[..., None], gmax[..., None])  # [n, s, q], as the categories compute them
        expected = np.where((levels > threshold).any(-1), np.argmax(levels > threshold, -1) + 1, q + 1)
        np.testing.assert_array_equal(cz.first_code_above(scale, gmax, threshold, q), expected, err_msg=f"threshold {threshold}")


@pytest.mark.parametrize("width", [1, 2, 7, 64, 577])
def test_stored_code_histogram_equals_counting_unpacked_codes(width):
    g = torch.Generator().manual_seed(width)
    codes = torch.randint(0, 16, (4, 3, width), generator=g, dtype=torch.uint8)
    np.testing.assert_array_equal(stored_code_histogram(store_codes(codes, 4), width, 4, chunk=5), code_histogram(codes, 15))
    wide = torch.randint(0, 256, (6, width), generator=g, dtype=torch.uint8)
    np.testing.assert_array_equal(stored_code_histogram(wide, width, 8), code_histogram(wide, 255))
    assert stored_code_histogram(store_codes(codes, 4)[:, :0], width, 4).shape == (4, 0, 15)  # no samples


def test_categories_are_cached_per_rule_and_parameters_and_handed_out_as_copies(index, monkeypatch):
    index._category_cache.clear()
    calls = []
    real = cz.categorize
    monkeypatch.setattr(cz, "categorize", lambda *a, **k: calls.append((a[1:], k)) or real(*a, **k))
    first = index.categories()
    first.loc[0, "category"] = "changed by the caller"
    again = index.categories(rule="paper", top_n=None, visual_threshold=2)  # the same parameters, spelled out
    assert again.loc[0, "category"] != "changed by the caller"
    pd.testing.assert_frame_equal(again, index.categories())
    assert len(calls) == 1
    fewer = index.categories(top_n=3)
    share = index.categories("share", balanced=True)
    assert len(calls) == 3 and not fewer.equals(again) and "n_visual" not in share
    index.category_chart()
    index.category_summary()
    index.category_figure()
    index.category_chart(top_n=3)
    assert len(calls) == 3, "the chart, summary and figure read the cached table"
    with pytest.raises(ValueError, match="rule must be"):
        index.categories("nope")


def test_one_neurons_category_equals_the_tables(index):
    index._category_cache.clear()
    table = cz.categorize(index)
    for layer in index.layers:
        for neuron in range(0, index.n_neurons, 7):
            want = table[(table.layer == layer) & (table.neuron == neuron)]["category"].iloc[0]
            assert cz.neuron_category(index, layer, neuron) == want  # from that neuron's arrays alone
    assert not index._category_cache
    index.categories()
    last = table[(table.layer == index.layers[-1]) & (table.neuron == 3)]
    assert cz.neuron_category(index, index.layers[-1], 3) == last["category"].iloc[0]  # from the cached table


def test_concept_explanations_equal_the_whole_table_path(index, data):
    from neuronwidgets.explain.data import category_of

    fast, slow = nw.ConceptExplainer(data), nw.ConceptExplainer(data)
    layer = index.layers[-1]
    for neuron in range(0, index.n_neurons, 5):
        got = fast.explain(index, layer, neuron).to_dict()
        want = slow.explain(index, layer, neuron, category=category_of(index, layer, neuron)).to_dict()
        assert got == want
    from neuronwidgets.explain.concept import masks_of

    assert masks_of(data, fast._masks) is masks_of(data, slow._masks)  # one mask cache per dataset


# --- a collection in passes over groups of layers ---------------------------------------------------
def _layer_arrays(index):
    return {layer: index._layer(layer) for layer in index.layers}


def _assert_same_index(a, b):
    assert a.layers == b.layers
    pd.testing.assert_frame_equal(a.samples.reset_index(drop=True), b.samples.reset_index(drop=True))
    pd.testing.assert_frame_equal(a._stats.reset_index(drop=True), b._stats.reset_index(drop=True), rtol=1e-6)
    ka, kb = _layer_arrays(a), _layer_arrays(b)
    for layer in a.layers:
        assert sorted(ka[layer]) == sorted(kb[layer])
        for name in ka[layer]:
            np.testing.assert_array_equal(ka[layer][name], kb[layer][name], err_msg=f"layer {layer} {name}")
    assert {k: v for k, v in a.manifest.items()} == {k: v for k, v in b.manifest.items()}


@pytest.mark.parametrize("text", ["caption", "generate"])
def test_a_collection_in_passes_equals_one_pass(toy, data, tmp_path, text, monkeypatch):
    from neuronwidgets.collect import passes

    few = data[:24]
    one = toy.collect(few, top_k=6, batch_size=8, text=text, path=tmp_path / "one", progress=False)
    generated = []
    real = type(toy).generate_ids
    monkeypatch.setattr(type(toy), "generate_ids", lambda self, *a, **k: generated.append(1) or real(self, *a, **k))
    per_layer = passes.state_bytes(toy.n_neurons, 16, 64, 6, 6, 10, 4)
    split = toy.collect(few, top_k=6, batch_size=8, text=text, path=tmp_path / "split", progress=False, max_state_bytes=per_layer)
    _assert_same_index(split, one)
    assert not passes.passes_folder(tmp_path / "split").exists()
    if text == "generate":
        assert len(generated) == 3, "the text is generated in the first pass only (3 batches), replayed in the others"
    assert json.loads((tmp_path / "split" / "manifest.json").read_text()) == json.loads((tmp_path / "one" / "manifest.json").read_text())
    again = toy.collect(few, top_k=6, batch_size=8, text=text, path=tmp_path / "split", progress=False, max_state_bytes=per_layer)
    _assert_same_index(again, one)  # a finished index is reused, not collected again
    in_memory = toy.collect(few, top_k=6, batch_size=8, text=text, progress=False, max_state_bytes=2 * per_layer)
    _assert_same_index(in_memory, one)


def test_layer_groups_fit_the_budget():
    from neuronwidgets.collect.passes import layer_groups, state_bytes
    from neuronwidgets.reduce.state import LayerState

    st = LayerState(64, 576, 64, 50, 50, 10, 4)
    arrays = sum(v.numel() * v.element_size() for k, v in st.t.items() if not k.endswith("_count"))
    assert arrays <= state_bytes(64, 576, 64, 50, 50, 10, 4) <= arrays + (40 << 20)
    assert layer_groups(range(5), 10, 25, "cpu") == [[0, 1], [2, 3], [4]]
    assert layer_groups(range(3), 10, 5, "cpu") == [[0], [1], [2]]  # one layer at least
    assert layer_groups(range(3), 10, None, "meta") == [[0, 1, 2]]  # no default limit off a CPU
    with pytest.raises(ValueError, match="max_state_bytes"):
        layer_groups(range(3), 10, 0, "cpu")


def test_a_pass_stops_the_forward_pass_after_its_last_layer(toy, data):
    from neuronwidgets.collect.passes import ReplaySession

    ran = []
    layers = toy.adapter.decoder_layers()
    handles = [layer.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    try:
        seen = []
        encoded = toy.encode_batch([data[0].get_image()], [data[0].prompt])
        ReplaySession(toy).forward_record(encoded, [0, 1], on_activation=lambda layer, acts: seen.append(layer))
    finally:
        for h in handles:
            h.remove()
    assert seen == [0, 1] and ran == [0], "layer 1's MLP was its last work: later layers never ran"
