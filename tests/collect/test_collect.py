"""Collection and the NeuronIndex against brute force over traces; resume, merge, corrupt folders."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from neuronwidgets.datasets import Sample, SampleList
from neuronwidgets.reduce.codes import codes_from_histogram
from neuronwidgets.reduce.moments import HIST_EDGES
from neuronwidgets.reduce.random_set import RandomSet
from neuronwidgets.reduce.state import LayerState
from neuronwidgets.store.index import NeuronIndex
from neuronwidgets.store.layout import FORMAT_VERSION, IndexFormatError

CAPTIONS = ["a red circle", "blue", "the red square is a shape", "a", "what is the blue circle"]


def make_data(n=13):
    rng = np.random.default_rng(1)
    samples = [
        Sample(id=f"s{i:02d}", image=Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)),
               caption=CAPTIONS[i % len(CAPTIONS)])
        for i in range(n)
    ]
    return SampleList(samples, name="rand", fingerprint=f"rand:{n}")


class Exploding(SampleList):
    """The same samples, but reading sample `at` raises (a run killed part-way)."""

    def __init__(self, base, at):
        super().__init__(list(base), name=base.name, fingerprint=base.fingerprint)
        self.at = at

    def __getitem__(self, i):
        if isinstance(i, int) and i == self.at:
            raise KeyboardInterrupt("killed")
        return super().__getitem__(i)


KW = dict(top_k=4, map_k=2, token_k=6, random_k=3, batch_size=4, text="caption", progress=False, max_text_tokens=8)


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def one_pass(tiny_session, data, tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "one"
    return tiny_session.collect(data, path=path, map_bits=8, **KW)


def brute_force(session, data, layer):
    """Per sample: the image values [P, N] and text values [T, N] from plain single traces."""
    out = []
    for s in data:
        tr = session.trace(s.image, s.prompt, layers=[layer], continuation=s.caption)
        acts = tr.activations(layer)
        cont = tr.tokens.index[tr.tokens.part == "continuation"].to_numpy()[: KW["max_text_tokens"]]
        out.append((acts[tr.image_positions], acts[cont]))
    return out


def test_stats_topk_and_exemplars_equal_brute_force(tiny_session, data, one_pass):
    index = one_pass
    for layer in (0, 2):
        bf = brute_force(tiny_session, data, layer)
        img = np.concatenate([b[0] for b in bf])
        txt = np.concatenate([b[1] for b in bf])
        st = index.stats(layer)
        np.testing.assert_array_equal(st.image_count, len(img))
        np.testing.assert_array_equal(st.text_count, len(txt))
        np.testing.assert_allclose(st.image_mean, img.mean(0), atol=1e-6)
        np.testing.assert_allclose(st.image_std, img.std(0), atol=1e-5)
        np.testing.assert_allclose(st.text_mean, txt.mean(0), atol=1e-6)
        np.testing.assert_allclose(st.image_max, img.max(0), atol=1e-6)
        np.testing.assert_allclose(st.text_max, txt.max(0), atol=1e-6)
        sample_max = np.stack([np.maximum(b[0].max(0), b[1].max(0)) for b in bf])  # [S, N]
        for neuron in (0, 7, 31):
            assert index.neuron_max(layer, neuron) == pytest.approx(sample_max[:, neuron].max(), abs=1e-6)
            edges, counts = index.histogram(layer, neuron, "image")
            v = img[:, neuron]  # bins are closed towards zero
            bins = np.where(v > 0, np.searchsorted(HIST_EDGES, v, side="right"), np.searchsorted(HIST_EDGES, v, side="left"))
            expected = np.bincount(bins, minlength=len(HIST_EDGES) + 1)
            np.testing.assert_array_equal(counts, expected)
            order = sorted(range(len(data)), key=lambda s: (-sample_max[s, neuron], s))[: KW["top_k"]]
            top = index.top_samples(layer, neuron)
            assert list(top["sample"]) == order and list(top["has_map"]) == [True, True, False, False]
            np.testing.assert_allclose(top["activation"], sample_max[order, neuron], atol=1e-6)
            records = index.records(layer, neuron)  # the best map_k, with their maps
            assert [r.sample for r in records] == order[: KW["map_k"]]
            # every top sample's histogram of map codes, kept map or not (what the categories read)
            for modality, part in (("image", 0), ("text", 1)):
                hists = index.top_code_histograms(layer, modality)[neuron]
                for rank, s in enumerate(order):
                    v = torch.from_numpy(bf[s][part][:, neuron]).float()
                    codes = torch.round(255 * v.clamp(min=0) / float(sample_max[s, neuron])).clamp(0, 255)
                    # batched and single passes differ in the last digits: codes agree within one step
                    found = codes_from_histogram(torch.from_numpy(hists[rank]), len(v)).float()
                    np.testing.assert_allclose(found, codes.sort(descending=True).values, atol=1, err_msg=f"{modality} rank {rank}")
            for r in records:
                np.testing.assert_allclose(r.activation, sample_max[r.sample, neuron], atol=1e-6)
                true_map = np.maximum(bf[r.sample][0][:, neuron], 0).reshape(index.grid)
                np.testing.assert_allclose(r.patch_map, true_map, atol=max(r.activation, 0) / 255 * 0.51 + 1e-6)
                true_text = np.maximum(bf[r.sample][1][:, neuron], 0)
                np.testing.assert_allclose(r.text_activations, true_text, atol=max(r.activation, 0) / 255 * 0.51 + 1e-6)
                assert r.text_tokens == index.samples.set_index("sample").loc[r.sample, "text_tokens"].tolist()[: len(true_text)]
            # top image-token exemplars: (value desc, sample, position)
            cands = [(-bf[s][0][p, neuron], s, p) for s in range(len(data)) for p in range(len(bf[s][0]))]
            best = sorted(cands)[: KW["token_k"]]
            ex = index.exemplars(layer, neuron, modality="image")
            assert list(zip(ex["sample"], ex["position"])) == [(s, p) for _, s, p in best]
            np.testing.assert_allclose(ex["activation"], [-v for v, _, _ in best], atol=1e-6)
            cols = index.grid[1]
            assert list(ex["row"]) == [p // cols for _, _, p in best]
            ex_text = index.exemplars(layer, neuron, modality="text")
            tok = ex_text.iloc[0]
            assert tok["token"] == index.samples.set_index("sample").loc[tok["sample"], "text_tokens"][tok["position"]]


def test_text_sources_prompt_and_generate(tiny_session, data):
    small = data[:3]
    by_prompt = tiny_session.collect(small, **{**KW, "text": "prompt"})
    assert by_prompt.manifest["text"] == "prompt"
    tokens = by_prompt.samples.text_tokens.iloc[0]
    assert "<image>" not in "".join(tokens) and "".join(tokens).strip().startswith("USER")
    generated = tiny_session.collect(small, **{**KW, "text": "generate"})
    first = small[0]
    answer_ids = tiny_session.generate_ids([first.image], [first.prompt], max_new_tokens=KW["max_text_tokens"])[0]
    assert list(generated.samples.text_token_ids.iloc[0]) == answer_ids
    with pytest.raises(ValueError, match="text must be one of"):
        tiny_session.collect(small, **{**KW, "text": "title"})
    nocap = SampleList([Sample(id="x", image=first.image)], fingerprint="nocap")
    with pytest.raises(ValueError, match="have no caption"):
        tiny_session.collect(nocap, **KW)


def test_resume_after_kill_gives_identical_index(tiny_session, data, one_pass, tmp_path):
    path = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        tiny_session.collect(Exploding(data, at=9), path=path, map_bits=8, checkpoint_every=1, **KW)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["next_batch"] == 2
    with pytest.raises(IndexFormatError, match="unfinished collection"):
        NeuronIndex.load(path)
    resumed = tiny_session.collect(data, path=path, map_bits=8, checkpoint_every=1, **KW)
    assert_same_index(resumed, one_pass, exact=True)
    # a rerun of a finished collection returns it without recomputing
    again = tiny_session.collect(data, path=path, map_bits=8, checkpoint_every=1, **KW)
    assert again.n_samples == len(data)
    # a different collection into the same folder is refused
    with pytest.raises(IndexFormatError, match="differs in: top_k"):
        tiny_session.collect(data, path=path, map_bits=8, **{**KW, "top_k": 3})
    # so is a folder from another format version, unless overwritten
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    want = f"format version 2; this neuronwidgets writes version {FORMAT_VERSION}: pass overwrite=True"
    with pytest.raises(IndexFormatError, match=want):
        tiny_session.collect(data, path=path, map_bits=8, checkpoint_every=1, **KW)
    again = tiny_session.collect(data, path=path, map_bits=8, checkpoint_every=1, overwrite=True, **KW)
    assert again.manifest["format_version"] == FORMAT_VERSION


# each move of the first two checkpoints (manifest.part, layers, samples, stats, manifest)
@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 7, 9])
def test_a_kill_while_a_checkpoint_moves_in_resumes_exactly(tiny_session, data, one_pass, tmp_path, monkeypatch, kill_at):
    """A checkpoint's files move in one by one: killed between two moves, the next run finishes the move, then resumes.

    (Before, it resumed from new layers with the old manifest (batches counted twice) or the reverse, or found none.)
    """
    from pathlib import Path

    path, real, calls = tmp_path / "killed", Path.replace, [0]

    def replace(self, target):
        calls[0] += 1
        if calls[0] == kill_at:
            raise KeyboardInterrupt("killed between two moves")
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        tiny_session.collect(data, path=path, map_bits=8, checkpoint_every=1, **KW)
    monkeypatch.setattr(Path, "replace", real)
    resumed = tiny_session.collect(data, path=path, map_bits=8, checkpoint_every=1, **KW)
    assert_same_index(resumed, one_pass, exact=True)
    assert not (tmp_path / "killed.writing").exists()


def test_a_folder_is_replaced_only_when_asked_and_its_explanations_are_set_aside(tiny_session, data, tmp_path):
    folder = tmp_path / "notes"
    (folder / "layers").mkdir(parents=True)
    (folder / "layers" / "mine.txt").write_text("precious")
    with pytest.raises(IndexFormatError, match="holds files but no NeuronIndex"):
        tiny_session.collect(data, path=folder, **KW)
    assert (folder / "layers" / "mine.txt").exists()
    path = tmp_path / "idx"
    tiny_session.collect(data, path=path, **KW)
    (path / "explanations.parquet").write_bytes(b"rows of the first index")
    tiny_session.collect(data, path=path, **KW)  # the same collection again: the table still fits it
    assert (path / "explanations.parquet").exists()
    with pytest.raises(ValueError, match="top_k and token_k must be at least 1"):  # a replacement that fails keeps them
        tiny_session.collect(data, path=path, overwrite=True, **{**KW, "top_k": 0})
    assert (path / "explanations.parquet").exists()
    with pytest.warns(UserWarning, match="explained the index being replaced"):
        tiny_session.collect(data, path=path, overwrite=True, **{**KW, "top_k": 3})
    assert not (path / "explanations.parquet").exists() and (path / "explanations.replaced.parquet").exists()
    (path / "explanations.parquet").write_bytes(b"rows of the second index")
    with pytest.warns(UserWarning, match="explanations.replaced-2.parquet"):  # the first set aside is kept
        tiny_session.collect(data, path=path, overwrite=True, **{**KW, "top_k": 2})
    assert (path / "explanations.replaced.parquet").read_bytes() == b"rows of the first index"


def test_readers_never_change_a_folder_and_dot_names_it(tiny_session, data, one_pass, tmp_path, monkeypatch):
    """A reader (a notebook checking progress) must not finish, or delete, what a writer is doing; '.' is a folder too."""
    path = tmp_path / "copy"
    shutil.copytree(one_pass.path, path)
    writing = tmp_path / "copy.writing"
    (writing / "layers").mkdir(parents=True)  # a writer at work (no manifest yet): readers see the old index
    assert NeuronIndex.load(path).n_samples == 13 and writing.exists()
    shutil.copy(path / "manifest.json", writing / "manifest.json")  # moves under way: the folder may be mixed
    with pytest.raises(IndexFormatError, match="was being rewritten when that stopped"):
        NeuronIndex.load(path)
    assert writing.exists()
    shutil.rmtree(writing)
    monkeypatch.chdir(path)
    assert NeuronIndex.load(".").n_samples == 13
    assert tiny_session.collect(data, path=".", map_bits=8, **KW).n_samples == 13  # the same collection, reused


def test_prompts_are_part_of_what_a_collection_is(tiny_session, data, tmp_path):
    """The dataset's fingerprint does not cover prompts set on its samples (the command line's --prompt)."""
    path = tmp_path / "p"
    tiny_session.collect(data, path=path, **KW)
    other = make_data()
    for s in other:
        s.prompt = "USER: <image>\nHow many shapes are there? ASSISTANT:"
    with pytest.raises(IndexFormatError, match="differs in: prompts"):
        tiny_session.collect(other, path=path, **KW)


def test_shards_merge_into_the_one_pass_index(tiny_session, data, one_pass, tmp_path):
    a = tiny_session.collect(data, path=tmp_path / "a", indices=range(0, 8), map_bits=8, **KW)
    b = tiny_session.collect(data, path=tmp_path / "b", indices=range(8, 13), map_bits=8, **KW)
    merged = NeuronIndex.merge([b, a], path=tmp_path / "ab")
    assert_same_index(merged, one_pass, exact=False)
    with pytest.raises(ValueError, match="more than one index"):
        NeuronIndex.merge([a, a], path=tmp_path / "aa")
    other = tiny_session.collect(data[:4], path=tmp_path / "c", **{**KW, "top_k": 3})
    with pytest.raises(ValueError, match="differ in top_k"):
        NeuronIndex.merge([a, other], path=tmp_path / "ac")
    elsewhere = tiny_session.collect(make_data(14), path=tmp_path / "d", indices=range(8, 13), map_bits=8, **KW)
    with pytest.raises(ValueError, match="different datasets"):  # positions 8-12 of another dataset
        NeuronIndex.merge([a, elsewhere], path=tmp_path / "ad")
    with pytest.raises(IndexFormatError, match="holds another index"):  # a merge never replaces another index unasked
        NeuronIndex.merge([b, a], path=tmp_path / "c")
    assert NeuronIndex.merge([b, a], path=tmp_path / "ab").manifest == merged.manifest  # the same merge again may
    assert merged.manifest == {**one_pass.manifest, "map_bits": merged.manifest["map_bits"]}  # as one pass writes it


def test_slices_collected_separately_merge_into_the_one_pass_index(tiny_session, data, tmp_path):
    """collect(data[:8]) and collect(data[8:]) merge into collect(data[:13]): sample numbers shifted into the union."""
    whole = data[:13]  # the same samples as `data`, named as the slices' union is
    one = tiny_session.collect(whole, path=tmp_path / "one", **KW)
    a = tiny_session.collect(data[:8], path=tmp_path / "a", **KW)
    b = tiny_session.collect(data[8:], path=tmp_path / "b", **KW)
    assert b.samples["sample"].tolist() == list(range(5))  # each slice numbers its own samples from 0
    merged = NeuronIndex.merge([b, a], path=tmp_path / "ab")
    assert merged.manifest["dataset"] == one.manifest["dataset"] and merged.manifest["prompts"] == one.manifest["prompts"]
    assert merged.manifest["positions"] == one.manifest["positions"] and merged.manifest["random_redrawn"] is True
    pd.testing.assert_frame_equal(merged.samples, one.samples)
    for layer in one.layers:
        got, want = merged._layer(layer), one._layer(layer)
        for k in want:
            if k.startswith("random_"):
                continue  # drawn again among the slices' random records (see merge_indexes)
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"layer {layer} {k}")
    pd.testing.assert_frame_equal(merged.stats(), one.stats(), rtol=1e-12, atol=1e-12)
    # the re-drawn random records are the real ones of the samples they name
    for r_merged in merged.records(1, 5, kind="random"):
        r_one = next(r for r in (a.records(1, 5, kind="random") + b.records(1, 5, kind="random")) if r.sample_id == r_merged.sample_id)
        np.testing.assert_array_equal(r_merged.patch_map, r_one.patch_map)
    assert merged.dataset is not None and len(merged.dataset) == 13 and merged.sample(9).id == data[9].id
    assert NeuronIndex.load(tmp_path / "ab", dataset=data).sample(9).id == data[9].id  # data is data[:13]
    with pytest.raises(ValueError, match="does not match"):
        NeuronIndex.load(tmp_path / "ab", dataset=data[:12])
    # a slice seen twice would be counted twice; another dataset's slice is another dataset
    overlapping = tiny_session.collect(data[6:10], path=tmp_path / "c", **KW)
    with pytest.raises(ValueError, match="counted twice"):
        NeuronIndex.merge([a, overlapping], path=tmp_path / "ac")
    foreign = tiny_session.collect(make_data(20)[8:13], path=tmp_path / "d", **KW)
    with pytest.raises(ValueError, match="different datasets"):
        NeuronIndex.merge([a, foreign], path=tmp_path / "ad")


def test_four_bit_maps_match_brute_force_and_resume_and_merge_exactly(tiny_session, data, one_pass, tmp_path):
    """The default 4-bit maps are kept packed, two codes to a byte, in the collection's state as on disk."""
    four = tiny_session.collect(data, path=tmp_path / "one", map_bits=4, **KW)
    for layer in (0, 2):
        for neuron in (0, 7, 31):
            for r4, r8 in zip(four.records(layer, neuron), one_pass.records(layer, neuron)):
                assert r4.sample == r8.sample
                step = max(r8.activation, 0) * (0.51 / 15 + 0.51 / 255) + 1e-6  # half a 4-bit step plus half an 8-bit one
                np.testing.assert_allclose(r4.patch_map, r8.patch_map, atol=step)
                np.testing.assert_allclose(r4.text_activations, r8.text_activations, atol=step)
    with pytest.raises(KeyboardInterrupt):
        tiny_session.collect(Exploding(data, at=9), path=tmp_path / "resumed", map_bits=4, checkpoint_every=1, **KW)
    resumed = tiny_session.collect(data, path=tmp_path / "resumed", map_bits=4, checkpoint_every=1, **KW)
    assert_same_index(resumed, four, exact=True)
    # shards on batch bounds: the same float32 partial sums
    a = tiny_session.collect(data, path=tmp_path / "a", indices=range(0, 4), map_bits=4, **KW)
    b = tiny_session.collect(data, path=tmp_path / "b", indices=range(4, 13), map_bits=4, **KW)
    assert_same_index(NeuronIndex.merge([a, b], path=tmp_path / "ab"), four, exact=False)


def assert_same_index(x: NeuronIndex, y: NeuronIndex, exact: bool):
    assert x.layers == y.layers and x.manifest["random_samples"] == y.manifest["random_samples"]
    pd.testing.assert_frame_equal(x.samples.reset_index(drop=True), y.samples.reset_index(drop=True))
    for layer in x.layers:
        ax, ay = x._layer(layer), y._layer(layer)
        assert set(ax) == set(ay)
        for k in ax:
            np.testing.assert_array_equal(ax[k], ay[k], err_msg=f"layer {layer} {k}")
    sx, sy = x.stats(), y.stats()
    if exact:
        pd.testing.assert_frame_equal(sx, sy)
    else:  # float64 sums added in another order
        pd.testing.assert_frame_equal(sx, sy, rtol=1e-12, atol=1e-12)


def test_load_validates_folder(one_pass, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(one_pass.path, path)
    loaded = NeuronIndex.load(path, expect_site="act")
    assert loaded.n_samples == 13 and loaded.site == "act"
    with pytest.raises(IndexFormatError, match="neuron site 'act', not 'mlp_in'"):
        NeuronIndex.load(path, expect_site="mlp_in")
    with pytest.raises(IndexFormatError, match="model 'tiny-random-llava', not 'other'"):
        NeuronIndex.load(path, expect_model="other")
    layer_file = path / "layers" / "layer_001.safetensors"
    layer_file.write_bytes(layer_file.read_bytes()[:100])
    with pytest.raises(IndexFormatError, match=r"layer_001\.safetensors' is corrupt"):
        NeuronIndex.load(path).records(1, 0)
    layer_file.unlink()
    with pytest.raises(IndexFormatError, match=r"layer_001\.safetensors' is missing"):
        NeuronIndex.load(path)
    (path / "stats.parquet").write_bytes(b"not parquet")
    with pytest.raises(IndexFormatError, match=r"stats\.parquet' is corrupt"):
        NeuronIndex.load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format version 99"):
        NeuronIndex.load(path)
    (path / "manifest.json").write_text("{oops")
    with pytest.raises(IndexFormatError, match=r"manifest\.json' is corrupt"):
        NeuronIndex.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match=r"manifest\.json' is missing"):
        NeuronIndex.load(path)
    with pytest.raises(IndexFormatError, match="no such directory"):
        NeuronIndex.load(tmp_path / "nothing")


def test_load_refuses_files_that_parse_but_do_not_fit_the_manifest(tiny_session, data, one_pass, tmp_path):
    """A layer file copied from another layer or another index, a table of another shape, a manifest missing keys."""
    path = tmp_path / "copy"
    shutil.copytree(one_pass.path, path)
    layers = path / "layers"
    shutil.copy(layers / "layer_000.safetensors", layers / "layer_001.safetensors")
    with pytest.raises(IndexFormatError, match=r"layer_001\.safetensors' holds layer 0, not layer 1"):
        NeuronIndex.load(path).records(1, 0)
    other = tiny_session.collect(data[:8], path=tmp_path / "other", map_bits=8, **{**KW, "top_k": 3})
    shutil.copy(other.path / "layers" / "layer_001.safetensors", layers / "layer_001.safetensors")
    with pytest.raises(IndexFormatError, match=r"does not fit its manifest: top_value is 48x3, the manifest means 48x4"):
        NeuronIndex.load(path).records(1, 0)
    shutil.copy(path / "samples.parquet", path / "stats.parquet")
    with pytest.raises(IndexFormatError, match=r"stats\.parquet' does not fit its manifest: it lacks the columns layer"):
        NeuronIndex.load(path)
    shutil.copy(other.path / "stats.parquet", path / "stats.parquet")
    with pytest.raises(IndexFormatError, match=r"samples\.parquet' does not fit|stats\.parquet' does not fit"):
        shutil.copy(other.path / "samples.parquet", path / "samples.parquet")
        NeuronIndex.load(path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "layers"}))
    with pytest.raises(IndexFormatError, match="lacks layers"):
        NeuronIndex.load(path)
    (path / "manifest.json").write_text("[]")
    with pytest.raises(IndexFormatError, match="a JSON list, not the manifest's object"):
        NeuronIndex.load(path)


def test_query_errors_name_the_valid_range(one_pass):
    with pytest.raises(IndexError, match=r"neuron 48 is out of range.*0..47"):
        one_pass.records(0, 48)
    with pytest.raises(IndexError, match=r"layer 7 is not in this index; its layers are \[0, 1, 2\]"):
        one_pass.exemplars(7, 0)
    with pytest.raises(ValueError, match="kind must be"):
        one_pass.records(0, 0, kind="best")


def test_random_records_are_the_bottom_k_hash_samples(one_pass):
    rs = RandomSet(3, 0)
    for s in range(13):
        rs.offer(s)
    assert one_pass.manifest["random_samples"] == [s for _, s, _ in rs.canonical()]
    recs = one_pass.records(0, 3, kind="random")
    assert [r.sample for r in recs] == one_pass.manifest["random_samples"]
    assert all(r.kind == "random" for r in recs)


def hand_index(bits=8, map_k=None):
    """A hand-made layer: 3x3 patches, 4 text slots, 2 neurons, 4 samples (see test below)."""
    from neuronwidgets.collect.runner import in_memory_index

    P, Tm, N = 9, 4, 2
    # acts[b, t, n]: positions 0..8 are patches, 9..12 text tokens
    acts = np.zeros((4, P + Tm, N), np.float32)
    # neuron 0 (global max 10): A visual, B multi-modal, C visual, D unactivated -> "visual"
    acts[0, :4, 0] = [10, 9, 8, 7]
    acts[1, :4, 0], acts[1, P : P + 2, 0] = [5, 5, 5, 5], [5, 5]
    acts[2, :4, 0], acts[2, P, 0] = [3.5, 3.5, 3.5, 3.5], 1
    acts[3, :3, 0] = [9, 9, 9]  # only three patches above 2: not visual
    # neuron 1 (global max 8): text tokens only -> "text"
    acts[:, P : P + 3, 1] = [[8, 8, 0], [6, 0, 6], [7, 7, 7], [0, 0, 1]]
    acts[:, :P, 1] = 0.5
    state = LayerState(N, P, Tm, top_k=4, token_k=8, random_k=0, bits=bits)
    image_pos = torch.arange(P).repeat(4, 1)
    text_pos = (torch.arange(Tm) + P).repeat(4, 1)
    state.update(torch.from_numpy(acts), image_pos, text_pos, torch.ones(4, Tm, dtype=torch.bool), torch.arange(4), [])
    manifest = {"layers": [0], "n_neurons": N, "grid": [3, 3], "n_patches": P, "max_text_tokens": Tm, "map_bits": bits,
                "top_k": 4, "token_k": 8, "random_k": 0, "model": "hand", "site": "act", "text": "caption", "map_k": map_k}
    samples = pd.DataFrame({"sample": range(4), "sample_id": list("ABCD"), "text_token_ids": [[1, 2, 3, 4]] * 4,
                            "text_tokens": [["w", "x", "y", "z"]] * 4, "text": ["w x y z"] * 4})
    return in_memory_index(manifest, {0: state}, samples, RandomSet(0, 0))


@pytest.mark.parametrize("bits,map_k", [(8, None), (4, None), (4, 1), (8, 0)])
def test_paper_rule_reproduces_hand_worked_example(bits, map_k):
    index = hand_index(bits, map_k)
    assert len(index.records(0, 0)) == (4 if map_k is None else map_k) and len(index.top_samples(0, 0)) == 4
    cats = index.categories(rule="paper", visual_min_patches=4).set_index("neuron")
    assert cats.loc[0, "category"] == "visual"
    assert (cats.loc[0, "n_visual"], cats.loc[0, "n_multimodal"], cats.loc[0, "n_unactivated"], cats.loc[0, "n_text"]) == (2, 1, 1, 0)
    assert cats.loc[1, "category"] == "text"
    # neuron 1: samples A, B, C have >= 2 tokens above 3 on the 0-10 scale (8 -> 10, 6 -> 7, 7 -> 8); D not
    assert (cats.loc[1, "n_text"], cats.loc[1, "n_unactivated"]) == (3, 1)
    share = hand_index(bits).categories(rule="share", top_n=4).set_index("neuron")
    assert share.loc[0, "image_share"] == 1.0 and share.loc[0, "category"] == "visual"
    assert share.loc[1, "image_share"] == 0.0 and share.loc[1, "category"] == "text"


def test_inactive_and_thresholds_are_parameters():
    idx = hand_index()
    strict = idx.categories(visual_min_patches=5).set_index("neuron")
    assert strict.loc[0, "n_visual"] == 0  # no sample has 5 patches above 2
    # By default the paper's 4-of-576 patches scales to the grid: 1 of these 9, so sample D
    # (three patches) is visual too; LLaVA's 24x24 grid keeps the paper's 4.
    scaled = idx.categories().set_index("neuron")
    assert (scaled.loc[0, "n_visual"], scaled.loc[0, "n_unactivated"]) == (3, 0)
    from neuronwidgets.categorize import paper_min_patches

    assert [paper_min_patches(n) for n in (576, 16, 9, 2304)] == [4, 1, 1, 16]
    from neuronwidgets.categorize import sample_labels

    labels = sample_labels(np.array([[3, 3, 3, 3, 0], [3, 3, 3, 0, 0]]), np.array([[4, 4], [4, 0]]))
    assert list(labels) == ["multi-modal", "unactivated"]


def test_category_tables_and_charts(one_pass):
    cats = one_pass.categories()
    assert set(cats.category) <= {"visual", "text", "multi-modal", "unactivated", "inactive"}
    assert {"n_visual", "n_text", "n_multimodal", "n_unactivated", "image_share", "image_base_rate"} <= set(cats.columns)
    summary = one_pass.category_summary()
    assert list(summary.layer) == [0, 1, 2]
    chart = one_pass.category_chart().to_dict()
    assert chart["mark"]["type"] == "bar"
    fig = one_pass.category_figure()
    assert fig.axes[0].get_xlabel() == "layer"


def test_code_histograms_round_trip():
    from neuronwidgets.reduce.codes import code_histogram

    codes = torch.randint(0, 16, (3, 5, 37), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    hist = code_histogram(codes, 15, chunk=64)  # several chunks
    expected = np.stack([np.bincount(row, minlength=16)[1:] for row in codes.reshape(-1, 37).numpy()]).reshape(3, 5, 15)
    np.testing.assert_array_equal(hist.numpy(), expected)
    stand_in = codes_from_histogram(hist, 37)
    np.testing.assert_array_equal(code_histogram(stand_in, 15).numpy(), expected)
    assert (stand_in[..., :-1] >= stand_in[..., 1:]).all()  # codes in descending order


def _fold_batches(acts, sparse: bool, k: int = 5, keep_dtype: bool = False):
    """A LayerState fed `acts` [batches, B, T, N] (positions 0..P-1 patches, the rest text)."""
    nb, B, T, N = acts.shape
    P = 4
    state = LayerState(N, P, T - P, top_k=k, token_k=k, random_k=0, bits=4)
    state.set_design(sparse=sparse, keep_dtype=keep_dtype)  # dense: as on a GPU, with fresh buffers
    for i in range(nb):
        valid = torch.ones(B, T - P, dtype=torch.bool)
        valid[::2, -2:] = False  # some padding
        state.update(acts[i], torch.arange(P).repeat(B, 1), (torch.arange(T - P) + P).repeat(B, 1), valid,
                     torch.arange(B) + i * B, [])
    return state


def test_sparse_and_dense_folds_agree_and_ties_follow_the_total_order():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(6, 8, 10, 7, generator=g)
    dense, sparse = _fold_batches(acts, False), _fold_batches(acts, True)
    for name in ("tok_image_value", "tok_image_sample", "tok_image_pos", "tok_text_value", "tok_text_sample", "tok_text_pos"):
        torch.testing.assert_close(sparse.t[name], dense.t[name], rtol=0, atol=0, msg=name)
    for name, value in dense.canonical_top().items():
        torch.testing.assert_close(sparse.canonical_top()[name], value, rtol=0, atol=0, msg=name)
    # Many exact ties (values on a coarse grid): both folds keep the exact (value desc, sample, position) order.
    tied = torch.randint(0, 3, (6, 8, 10, 7), generator=g).float()
    state = _fold_batches(tied, True)
    dense_tied = _fold_batches(tied, False)
    for name, value in state.t.items():
        if not name.startswith("top_"):
            assert torch.equal(dense_tied.t[name], value), name
    flat = tied.reshape(48, 10, 7)  # sample s = batch * 8 + b
    for n in range(7):
        cands = sorted((-float(flat[s, p, n]), s, p) for s in range(48) for p in range(4))[:5]
        assert state.t["tok_image_sample"][n].tolist() == [s for _, s, _ in cands]
        assert state.t["tok_image_pos"][n].tolist() == [p for _, _, p in cands]
        smax = flat[:, :4, n].amax(1)
        text = flat[:, 4:, n].clone()
        text[::2, -2:] = -torch.inf
        smax = torch.maximum(smax, text.amax(1))
        expected = sorted(range(48), key=lambda s: (-float(smax[s]), s))[:5]
        assert state.canonical_top()["top_sample"][n].tolist() == expected


def test_packed_top_order_equals_two_stable_sorts():
    from neuronwidgets.reduce.topk import packed_order_key, sorted_top_order, top_order

    g = torch.Generator().manual_seed(3)
    values = torch.randint(-3, 4, (50, 40), generator=g).float() / 2  # many ties
    values[:, :5] = -torch.inf  # empty slots ...
    keys = torch.randint(0, 2**32 - 2, (50, 40), generator=g)
    keys[:, :5] = -1  # ... have key -1
    values[::3, 7] = -0.0  # ties with +0.0
    keys[::5, 9] = 2**32 - 2  # the largest key that packs
    assert torch.equal(top_order(values, keys, 17), sorted_top_order(values, keys, 17))
    unordered = top_order(values, keys, 17, ordered=False)  # the same entries, in any order
    assert torch.equal(unordered.sort(1).values, sorted_top_order(values, keys, 17).sort(1).values)
    v = torch.tensor([-torch.inf, -1e30, -2.5, -1e-40, -0.0, 0.0, 1e-40, 3.0, 1e30, torch.inf])
    key = packed_order_key(v[None], torch.zeros(1, len(v), dtype=torch.int64))[0]
    assert (key[1:] >= key[:-1]).all() and key[4] == key[5]  # float order, -0.0 == +0.0
    big = keys.clone()
    big[0, 0] = 2**40  # too large to pack: the two-sort path
    assert torch.equal(top_order(values, big, 17), sorted_top_order(values, big, 17))


@pytest.mark.parametrize("n_rows", [6, 40])  # most rows have entries (every row a group) / few do (the rows listed)
def test_group_by_row_lays_every_entry_in_its_rows_group(n_rows):
    from neuronwidgets.reduce.topk import group_by_row, padded

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 6, (50,), generator=g)
    values = torch.arange(50) + 1
    rows, flat, shape = group_by_row(ids, n_rows)
    padded = padded((rows, flat, shape), values, 0)
    listed = torch.arange(n_rows) if rows is None else rows
    assert (rows is None) == (n_rows == 6) and shape == (listed.numel(), int(torch.bincount(ids).max()))
    for group, row in enumerate(listed.tolist()):
        got = padded[group][padded[group] > 0].sort().values
        assert torch.equal(got, values[ids == row]), row
    assert group_by_row(ids[:0], n_rows) is None


@pytest.mark.parametrize("n_rows", [6, 40])
def test_group_by_row_of_runs_lays_entries_as_of_their_concatenation(n_rows):
    """Runs (ascending ones laid out without a sort, others sorted) give each row's entries, in the concatenation's order."""
    from neuronwidgets.reduce.topk import group_by_row, padded

    g = torch.Generator().manual_seed(6)
    runs = [torch.randint(0, 6, (n,), generator=g) for n in (30, 0, 25, 40)]
    runs = [runs[0].sort().values, runs[1], runs[2], runs[3].sort().values]  # ascending, empty, unsorted, ascending
    ids = torch.cat(runs)
    values = torch.arange(ids.numel()) + 1
    rows, flat, shape = group_by_row(runs, n_rows)
    assert flat.unique().numel() == ids.numel()  # a slot of its own for every entry
    padded = padded((rows, flat, shape), values, 0)
    listed = torch.arange(n_rows) if rows is None else rows
    assert shape == (listed.numel(), int(torch.bincount(ids).max()))
    for group, row in enumerate(listed.tolist()):
        assert torch.equal(padded[group][padded[group] > 0].sort().values, values[ids == row]), row
    assert group_by_row([ids[:0], ids[:0]], n_rows) is None


def test_packed_order_key_is_the_same_on_either_byte_order(monkeypatch):
    from neuronwidgets.reduce.topk import packed_order_key

    g = torch.Generator().manual_seed(7)
    values = torch.randn(5, 9, generator=g)
    values[0, :4] = torch.tensor([-0.0, 0.0, -torch.inf, torch.inf])
    keys = torch.randint(-1, 2**32 - 1, (5, 9), generator=g)
    little = packed_order_key(values, keys)
    monkeypatch.setattr(sys, "byteorder", "big")  # the path without the in-place high halves
    assert torch.equal(packed_order_key(values, keys), little)


def test_histogram_bins_equal_a_search_at_every_edge():
    from neuronwidgets.reduce.moments import N_BINS, hist_bins

    edges = HIST_EDGES.astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-30, 3e38, -3e38], np.float32)
    rng = np.random.default_rng(0)
    spread = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-5, 5, 20000)).astype(np.float32)
    values = np.concatenate([edges, np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(-np.inf)), special, spread])
    expected = np.where(values > 0, np.searchsorted(HIST_EDGES, values, side="right"), np.searchsorted(HIST_EDGES, values, side="left"))
    got = hist_bins(torch.from_numpy(values.reshape(-1, 7) if len(values) % 7 == 0 else values)).numpy().ravel()
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= 0 and got.max() < N_BINS


def test_a_nan_activation_never_duplicates_a_sample():
    """Review find: padding of the candidate rows tied with empty slots, and a NaN sample left a row short."""
    acts = torch.randn(6, 6, 3, generator=torch.Generator().manual_seed(0))
    acts[2, 0, 1] = float("nan")  # neuron 1 on sample 102
    state = LayerState(3, 4, 2, top_k=8, token_k=4, random_k=0, bits=4)
    state.update(acts, torch.arange(4).repeat(6, 1), (torch.arange(2) + 4).repeat(6, 1), torch.ones(6, 2, dtype=torch.bool),
                 torch.arange(6) + 100, [])
    for n in range(3):
        kept = [s for s in state.canonical_top()["top_sample"][n].tolist() if s >= 0]
        assert len(kept) == len(set(kept)), kept
    assert 102 not in state.canonical_top()["top_sample"][1].tolist()  # a NaN ranks nowhere


def test_bad_collection_and_category_arguments_are_refused(tiny_session, data):
    with pytest.raises(ValueError, match="top_k and token_k must be at least 1"):
        tiny_session.collect(data[:2], **{**KW, "top_k": 0})
    with pytest.raises(ValueError, match="map_k must be >= 0"):
        tiny_session.collect(data[:2], **{**KW, "map_k": -1})
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        tiny_session.collect(data[:2], **{**KW, "batch_size": 0})
    with pytest.raises(ValueError, match="random_k must be >= 0"):
        tiny_session.collect(data[:2], **{**KW, "random_k": -1})
    with pytest.raises(ValueError, match="no layers given"):
        tiny_session.collect(data[:2], **{**KW, "layers": []})
    # indices are the samples' numbers: each a dataset position, once (-1 marks an empty slot inside)
    with pytest.raises(IndexError, match=r"positions 0\.\.1; got \[-1, 2\]"):
        tiny_session.collect(data[:2], indices=[0, -1, 2], **KW)
    with pytest.raises(ValueError, match=r"each sample once.*repeated: \[1\]"):
        tiny_session.collect(data[:2], indices=[1, 0, 1], **KW)
    with pytest.raises(ValueError, match="indices is empty"):
        tiny_session.collect(data[:2], indices=[], **KW)
    with pytest.raises(ValueError, match=r"max_text_tokens must be >= 1 with text='generate', got 0"):
        tiny_session.collect(data[:2], **{**KW, "text": "generate", "max_text_tokens": 0})
    with pytest.raises(ValueError, match="0-10 scale, so 0 or more"):
        hand_index().categories(visual_threshold=-1)


def test_stand_in_maps_at_8_bits():
    from neuronwidgets.reduce.codes import code_histogram

    codes = torch.randint(0, 256, (4, 3, 50), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    hist = code_histogram(codes, 255)
    assert torch.equal(code_histogram(codes_from_histogram(hist, 50), 255), hist)


def test_layers_reduced_side_by_side_equal_one_state_per_layer():
    """On a CPU a BatchReducer folds a group of layers as one LayerState: the same arrays as layer by layer."""
    from neuronwidgets.collect.hook import BatchReducer

    g = torch.Generator().manual_seed(3)
    layers, B, P, Tm, T, N = [1, 4, 5], 6, 4, 5, 12, 7
    make = lambda: {layer: LayerState(N, P, Tm, top_k=5, token_k=6, random_k=2, bits=4) for layer in layers}  # noqa: E731
    separate, grouped = make(), BatchReducer(make(), batch_size=B)
    assert len(grouped._groups) == 1
    for i in range(5):
        acts = {layer: torch.randn(B, T, N, generator=g).round(decimals=1) for layer in layers}  # ties
        image_pos = torch.arange(P).repeat(B, 1) + 2
        text_pos = torch.arange(Tm).repeat(B, 1) + 2 + P
        valid = torch.rand(B, Tm, generator=g) < 0.7
        samples = torch.arange(B) + i * B
        slots = [(0, 1), (1, 4)] if i < 2 else []
        grouped.begin(image_pos, text_pos, valid, samples, slots)
        for layer in layers:
            separate[layer].update(acts[layer], image_pos, text_pos, valid, samples, slots)
            grouped(layer, acts[layer])
    for layer, state in grouped.states().items():
        expected = {**separate[layer].t, **separate[layer].canonical_top()}
        for name, value in {**state.t, **state.canonical_top()}.items():
            if name.endswith(("_sum", "_sumsq")):  # float32 partial sums over another layout: the last digits
                torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-5)
            else:
                assert torch.equal(value, expected[name]), (layer, name)
    # a state split and concatenated again is the same state
    again = LayerState.concat(list(grouped.states().values()))
    for name, value in grouped._groups[0].state.t.items():
        assert torch.equal(again.t[name], value), name


def test_checkpoints_come_every_n_batches_or_by_time(tiny_session, data):
    from neuronwidgets.collect.runner import _CheckpointClock

    every = _CheckpointClock(3)
    assert [b for b in range(1, 10) if every.due(b)] == [3, 6, 9]
    clock = _CheckpointClock(None)
    assert not clock.due(1)  # a minute has not passed
    clock.MIN_SECONDS = 0.0
    assert clock.due(1)
    with clock.writing():
        pass
    clock.write_seconds = 100.0  # a slow write: the next one waits 19 times as long
    assert not clock.due(2)
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1"):
        tiny_session.collect(data[:2], checkpoint_every=0, **KW)


def test_a_batch_without_text_and_holes_in_the_text_mask():
    """Review finds: a batch whose texts are all empty crashed (text='generate' can answer nothing);
    a valid text token after an invalid one was cut off."""
    from neuronwidgets.collect.hook import BatchReducer

    B, P, Tm, N = 3, 2, 3, 4
    acts = torch.randn(B, P + Tm, N, generator=torch.Generator().manual_seed(0))
    image_pos, text_pos = torch.arange(P).repeat(B, 1), (torch.arange(Tm) + P).repeat(B, 1)
    none = torch.zeros(B, Tm, dtype=torch.bool)
    state = LayerState(N, P, Tm, 3, 3, 0, 4)
    state.update(acts, image_pos, text_pos, none, torch.arange(B), [])
    reducer = BatchReducer({0: LayerState(N, P, Tm, 3, 3, 0, 4), 1: LayerState(N, P, Tm, 3, 3, 0, 4)}, batch_size=B)
    reducer.begin(image_pos, text_pos, none, torch.arange(B), [])
    reducer(0, acts)
    reducer(1, acts)
    for st in (state, *reducer.states().values()):
        assert int(st.t["text_count"]) == 0 and int(st.t["image_count"]) == B * P
        assert torch.equal(st.t["image_max"], acts[:, :P].amax((0, 1)))
    holes = torch.zeros(B, Tm, dtype=torch.bool)
    holes[0, 2] = True  # only the last text token of sample 0
    state = LayerState(N, P, Tm, 3, 3, 0, 4)
    state.update(acts, image_pos, text_pos, holes, torch.arange(B), [])
    assert int(state.t["text_count"]) == 1
    assert torch.equal(state.t["text_max"], acts[0, P + 2])


def test_quantize_reads_tiny_and_huge_scales():
    from neuronwidgets.reduce.codes import quantize

    assert quantize(torch.tensor([[1e-40, 5e-41, 0.0]]), torch.tensor([[1e-40]]), 4).tolist() == [[15, 8, 0]]  # subnormal max
    assert quantize(torch.tensor([[1.5e38]]), torch.tensor([[3e38]]), 4).tolist() == [[8]]  # no overflow
    assert quantize(torch.tensor([[-1.0, 0.0, float("nan")]]), torch.tensor([[0.0]]), 4).tolist() == [[0, 0, 0]]


def test_layer_by_layer_reducer_equals_update():
    """On a GPU (dense states) the BatchReducer folds each layer on its own, with the text trimmed once per batch."""
    from neuronwidgets.collect.hook import BatchReducer

    g = torch.Generator().manual_seed(0)

    def dense_states():
        states = {layer: LayerState(5, 3, 4, top_k=3, token_k=4, random_k=1, bits=4) for layer in (0, 1)}
        for st in states.values():
            st.set_design(sparse=False, keep_dtype=True)
        return states

    direct, reducer = dense_states(), BatchReducer(dense_states(), batch_size=4)
    assert not reducer._groups
    for i in range(4):
        acts = {layer: torch.randn(4, 9, 5, generator=g) for layer in (0, 1)}
        image_pos, text_pos = torch.arange(3).repeat(4, 1), (torch.arange(4) + 3).repeat(4, 1)
        valid = torch.arange(4)[None] < torch.randint(0, 5, (4, 1), generator=g)  # prefix masks, some empty
        samples, slots = torch.arange(4) + 4 * i, [(0, 2)] if i == 1 else []
        reducer.begin(image_pos, text_pos, valid, samples, slots)
        for layer in (0, 1):
            direct[layer].update(acts[layer], image_pos, text_pos, valid, samples, slots)
            reducer(layer, acts[layer])
    for layer, state in reducer.states().items():
        for name, value in state.t.items():
            if name.endswith(("_sum", "_sumsq")):
                torch.testing.assert_close(value, direct[layer].t[name], rtol=1e-6, atol=1e-5)
            else:
                assert torch.equal(value, direct[layer].t[name]), (layer, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparse", [False, True])
def test_half_precision_reduction_equals_float32(dtype, sparse):
    """On a GPU float16/bfloat16 activations are reduced as they are (no float32 copy): the same index."""
    g = torch.Generator().manual_seed(0)
    acts = (torch.randn(6, 8, 10, 7, generator=g) * 3).to(dtype)
    acts[:, :, :, 2] = torch.randint(0, 3, (6, 8, 10), generator=g).to(dtype)  # ties
    acts[1, :, :, 3] = 0.0
    reference = _fold_batches(acts.float(), True)
    state = _fold_batches(acts, sparse, keep_dtype=True)
    for name, value in reference.t.items():
        if name.endswith(("_sum", "_sumsq")):
            torch.testing.assert_close(state.t[name], value, rtol=1e-6, atol=1e-4, msg=name)
        elif name.startswith("top_"):
            continue  # unordered slots: compared in canonical order below
        else:
            assert torch.equal(state.t[name], value), name
    for name, value in reference.canonical_top().items():
        assert torch.equal(state.canonical_top()[name], value), name


def test_nan_activations_rank_nowhere_on_both_designs():
    """A NaN never enters a top-k list, whichever design reduces it (topk ranks NaN first; the dense fold must not)."""
    g = torch.Generator().manual_seed(5)
    acts = torch.randn(6, 8, 10, 7, generator=g)
    acts[0, :, :, 1] = float("nan")  # a whole batch of NaN for neuron 1: more than k per batch
    acts[2, 3, 1, 4] = float("nan")  # one NaN patch
    acts[3, 5, 6, 5] = float("nan")  # one NaN text token
    acts[4, 1, 2, 6] = float("inf")
    sparse, dense = _fold_batches(acts, True), _fold_batches(acts, False)
    for name, value in sparse.t.items():
        if not name.startswith("top_"):  # sums and maxima are NaN on both
            exact = 0 if not name.endswith(("_sum", "_sumsq")) else 1e-5
            torch.testing.assert_close(dense.t[name], value, rtol=exact, atol=exact, equal_nan=True, msg=name)
    for name, value in sparse.canonical_top().items():
        assert torch.equal(dense.canonical_top()[name], value), name
    for m in ("image", "text"):
        kept = sparse.t[f"tok_{m}_value"]
        assert not kept.isnan().any() and (sparse.t[f"tok_{m}_sample"][1] // 8 != 0).all()  # batch 0's NaNs never kept
    assert not sparse.canonical_top()["top_value"].isnan().any()


def test_four_bit_state_keeps_maps_packed():
    four, eight = (LayerState(6, 9, 5, top_k=3, token_k=2, random_k=2, bits=b) for b in (4, 8))
    for name, width in (("top_image_codes", 9), ("top_text_codes", 5), ("random_image_codes", 9), ("random_text_codes", 5)):
        assert eight.t[name].shape[-1] == width and four.t[name].shape[-1] == (width + 1) // 2, name
    codes = torch.randint(0, 16, (4, 9), dtype=torch.uint8)
    assert torch.equal(four.unstore(four.store(codes), 9), codes) and torch.equal(eight.store(codes), codes)


def test_half_precision_sums_of_squares_keep_float32_accuracy_on_a_cpu():
    """Review find: a CPU's norm kernel adds up serially; a large mean with a small spread lost its variance."""
    g = torch.Generator().manual_seed(0)
    B, P, N = 64, 577, 4
    acts = (10 + 0.05 * torch.randn(B, P, N, generator=g)).to(torch.bfloat16)

    def fold(a, keep):
        state = LayerState(N, P, 0, top_k=1, token_k=1, random_k=0, bits=4)
        state.set_design(sparse=True, keep_dtype=keep)
        state.update(a, torch.arange(P).repeat(B, 1), torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0, dtype=torch.bool),
                     torch.arange(B), [])
        return state.t

    half, reference = fold(acts, True), fold(acts.float(), False)
    assert torch.equal(half["image_sumsq"], reference["image_sumsq"]) and torch.equal(half["image_sum"], reference["image_sum"])
    exact = acts.double().reshape(-1, N)
    std = torch.sqrt(half["image_sumsq"] / len(exact) - (half["image_sum"] / len(exact)) ** 2)
    torch.testing.assert_close(std, exact.std(0, unbiased=False), rtol=0.05, atol=0)


def test_prefetching_collection_equals_the_plain_one_and_stops_at_a_failing_read(tiny_session, data, one_pass, tmp_path):
    """collect(prefetch=True), the default on a GPU: batches read one ahead on a daemon thread."""
    ahead = tiny_session.collect(data, path=tmp_path / "ahead", map_bits=8, prefetch=True, **KW)
    assert_same_index(ahead, one_pass, exact=True)
    path = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        tiny_session.collect(Exploding(data, at=9), path=path, map_bits=8, checkpoint_every=1, prefetch=True, **KW)
    assert json.loads((path / "manifest.json").read_text())["next_batch"] == 2  # batches 0 and 1 kept
    resumed = tiny_session.collect(data, path=path, map_bits=8, checkpoint_every=1, prefetch=True, **KW)
    assert_same_index(resumed, one_pass, exact=True)


def test_ahead_never_makes_the_caller_wait_for_a_read_in_flight():
    import threading

    from neuronwidgets.collect.runner import ahead

    release, started = threading.Event(), threading.Event()

    def read(i):
        if i == 1:
            started.set()
            release.wait()  # a read that blocks until released
        if i == 3:
            raise ValueError("sample 3 is unreadable")
        return i * 10

    assert list(ahead(lambda i: i * 10, range(5))) == [0, 10, 20, 30, 40]
    items = ahead(read, range(5))
    with pytest.raises(RuntimeError, match="the model failed"):
        for value in items:
            assert value == 0
            started.wait()
            raise RuntimeError("the model failed")  # surfaces while item 1 is still being read
    assert not release.is_set()
    release.set()
    got = []
    with pytest.raises(ValueError, match="sample 3 is unreadable"):  # an error in a read surfaces at its item
        for value in ahead(read, range(5)):
            got.append(value)
    assert got == [0, 10, 20]
    threads = [t for t in threading.enumerate() if t.name == "neuronwidgets-prefetch"]
    assert all(t.daemon for t in threads)


def test_layer_state_refuses_maps_of_the_wrong_width():
    arrays = LayerState(3, 5, 4, top_k=2, token_k=2, random_k=1, bits=8).to_numpy()
    with pytest.raises(ValueError, match="top_image_codes holds maps 5 bytes wide; 5 4-bit codes take 3"):
        LayerState.from_numpy(arrays, n_patches=5, max_text=4, top_k=2, token_k=2, random_k=1, bits=4)


def test_an_image_only_collection_without_text_tokens(tiny_session, data, tmp_path):
    """max_text_tokens=0: patches only (review find: saving crashed on maps of width 0)."""
    tiny_session.collect(data, path=tmp_path / "image-only", **{**KW, "max_text_tokens": 0})
    index = NeuronIndex.load(tmp_path / "image-only")
    assert "text" not in set(index.categories().category)
    assert (index.stats(0).text_count == 0).all()
    record = index.records(0, 0)[0]
    assert len(record.text_activations) == 0 and record.patch_map.shape == index.grid
    assert index.exemplars(0, 0, modality="text").empty and len(index.exemplars(0, 0, modality="image")) == KW["token_k"]


def test_paths_with_a_tilde_mean_the_home_folder(tiny_session, data, tmp_path, monkeypatch):
    """collect, load, merge and export read `~` as the shell does (it made a folder named '~' and then failed)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    index = tiny_session.collect(data, path="~/runs/x", **KW)
    assert (tmp_path / "home" / "runs" / "x" / "manifest.json").exists() and not (tmp_path / "~").exists()
    assert NeuronIndex.load("~/runs/x").manifest == index.manifest
    import neuronwidgets.widgets as W

    out = W.to_html(W.TokenHeatmap(tiny_session.trace(data[0].image, "USER: <image>\nhi ASSISTANT:"), layer=0, neuron=0), "~/t.html")
    assert out == tmp_path / "home" / "t.html" and out.exists()


def test_a_dataset_given_to_load_is_checked_like_attach(tiny_session, data, one_pass):
    other = make_data(12)  # another fingerprint
    with pytest.raises(ValueError, match="fingerprint"):
        NeuronIndex.load(one_pass.path, dataset=other)
    assert NeuronIndex.load(one_pass.path, dataset=data).dataset is data


def test_folders_of_earlier_versions_without_positions_or_prompts_still_match(one_pass):
    """An earlier merge left `positions` out of its manifest, and `prompts` came later: such a folder is the same collection."""
    from neuronwidgets.store.layout import collection_differences

    old = {k: v for k, v in one_pass.manifest.items() if k not in ("positions", "prompts")}
    assert collection_differences(old, one_pass.manifest) == []
    assert collection_differences({**old, "top_k": 9}, one_pass.manifest) == ["top_k"]


def test_a_folder_holding_only_a_decoding_takes_an_index_and_keeps_the_decoding(tiny_session, data, tmp_path):
    """A neuron decoding depends on the model alone: it may be made first, and the index moves in beside it."""
    import neuronwidgets as nw

    folder = tmp_path / "decoded"
    nw.decode_neurons(tiny_session, k=3, path=folder)
    before = (folder / "decoding.parquet").read_bytes()
    index = tiny_session.collect(data, path=folder, **KW)
    assert (folder / "decoding.parquet").read_bytes() == before and index.n_samples == len(data)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(IndexFormatError, match="holds a different collection|holds files"):
        tiny_session.collect(data[:4], path=folder, **KW)


def test_a_version_4_folder_still_loads_with_the_same_categories(one_pass, tmp_path):
    """Format 4 kept code histograms only for the top samples past map_k; format 5 keeps them for all (faster categories)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = tmp_path / "v4"
    shutil.copytree(one_pass.path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    map_k = manifest["map_k"]
    for layer in manifest["layers"]:
        file = path / "layers" / f"layer_{layer:03d}.safetensors"
        with safe_open(str(file), "np") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
            note = json.loads(f.metadata()["neuronwidgets"])
        for mod in ("image", "text"):
            arrays[f"top_{mod}_hist"] = np.ascontiguousarray(arrays[f"top_{mod}_hist"][:, map_k:])
        save_file(arrays, str(file), metadata={"neuronwidgets": json.dumps({**note, "format_version": 4}, sort_keys=True)})
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 4}))
    old = NeuronIndex.load(path)
    pd.testing.assert_frame_equal(old.categories(), one_pass.categories())
    for layer in old.layers:
        np.testing.assert_array_equal(old.top_code_histograms(layer, "image"), one_pass.top_code_histograms(layer, "image"))
    assert [r.sample for r in old.records(1, 3)] == [r.sample for r in one_pass.records(1, 3)]
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(IndexFormatError, match="reads versions 4 and 5"):
        NeuronIndex.load(path)
