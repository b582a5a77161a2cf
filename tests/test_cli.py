"""The command line: collect from a local checkpoint and an image folder, torchrun shards, COCO files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuronwidgets.datasets.coco import coco, decode_segmentation
from neuronwidgets.store.index import NeuronIndex

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COLLECT = ["collect", "--batch-size", "2", "--text", "caption", "--top-k", "3", "--random-k", "2", "--checkpoint-every", "1",
           "--max-text-tokens", "6"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_session):
    path = tmp_path_factory.mktemp("model") / "tiny-llava"
    tiny_session.model.save_pretrained(path)
    tiny_session.processor.save_pretrained(path)
    return path


def write_images(folder: Path, n: int, bad: int | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    captions = {}
    for i in range(n):
        f = folder / f"img{i:02d}.png"
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)  # drawn for every i: the same images after a fix
        if i == bad:
            f.write_bytes(b"this is not a png")
        else:
            Image.fromarray(pixels).save(f)
        captions[f.name] = {"caption": ["a red circle", "blue square", "the shape"][i % 3]}
    (folder / "captions.json").write_text(json.dumps(captions))
    return folder


def run(args, env=None, torchrun=False, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "neuronwidgets", *args]
    else:
        cmd = [sys.executable, "-m", "neuronwidgets", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def assert_same(a: NeuronIndex, b: NeuronIndex):
    assert a.layers == b.layers and a.n_samples == b.n_samples
    assert a.manifest["random_samples"] == b.manifest["random_samples"]
    for layer in a.layers:
        la, lb = a._layer(layer), b._layer(layer)
        for k in la:
            if k.endswith("value"):
                np.testing.assert_allclose(la[k], lb[k], atol=1e-5, err_msg=k)
            elif "codes" in k:  # quantised from values equal to float rounding
                assert np.mean(la[k] == lb[k]) > 0.99, k
            else:
                np.testing.assert_array_equal(la[k], lb[k], err_msg=k)
    np.testing.assert_allclose(a.stats().image_mean, b.stats().image_mean, atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_ranks_equals_single_process_and_resumes(tmp_path, checkpoint):
    images = write_images(tmp_path / "images", 11, bad=7)
    common = [*COLLECT, "--model", str(checkpoint), "--data", str(images)]
    # batches of 2 go round-robin: rank 1 owns batches 1 and 3 (images 6, 7); the unreadable image 7 stops it part-way
    failed = run([*common, "--out", str(tmp_path / "dist")], torchrun=True, check=False)
    assert failed.returncode != 0
    assert "img07.png" in failed.stdout + failed.stderr
    shard1 = json.loads((tmp_path / "dist" / "shards" / "rank-001-of-002" / "manifest.json").read_text())
    assert shard1["complete"] is False and shard1["next_batch"] >= 1
    write_images(tmp_path / "images", 11)  # the file is fixed; the same command resumes
    run([*common, "--out", str(tmp_path / "dist")], torchrun=True)
    run([*common, "--out", str(tmp_path / "single")])
    dist, single = NeuronIndex.load(tmp_path / "dist"), NeuronIndex.load(tmp_path / "single")
    assert_same(dist, single)
    assert dist.manifest == single.manifest  # the manifest one process writes (positions, next_batch, nothing added)
    again = run([*common, "--out", str(tmp_path / "dist"), "--top-k", "4"], torchrun=True, check=False)
    assert again.returncode != 0 and "differs in: top_k" in again.stderr  # another collection: refused before any shard runs
    info = run(["info", str(tmp_path / "dist")])
    assert "11 samples" in info.stdout and "layer" in info.stdout


@pytest.mark.slow
def test_ranks_that_disagree_stop_with_the_difference(tmp_path, checkpoint):
    images = write_images(tmp_path / "images", 4)
    script = tmp_path / "launch.sh"
    # each rank gets a different --top-k through its own LOCAL_RANK
    script.write_text(
        f'#!/bin/sh\nexec {sys.executable} -m neuronwidgets collect --model {checkpoint} --data {images} --out {tmp_path / "o"} '
        '--batch-size 2 --text caption --top-k $((3 + LOCAL_RANK))\n'
    )
    script.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                           "--no-python", str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "ranks disagree" in proc.stdout + proc.stderr and "top_k" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_merge_command_and_errors(tmp_path, checkpoint):
    images = write_images(tmp_path / "images", 6)
    common = [*COLLECT, "--model", str(checkpoint), "--data", str(images)]
    run([*common, "--out", str(tmp_path / "all")])
    # Two shards of the same folder (as torchrun's ranks write them), merged on the command line: the one-pass index.
    from neuronwidgets.cli import load_data
    from neuronwidgets.model.session import Session

    session = Session.from_pretrained(checkpoint, device="cpu")
    data = load_data(str(images))
    kw = dict(batch_size=2, text="caption", top_k=3, random_k=2, max_text_tokens=6, progress=False)
    session.collect(data, path=tmp_path / "a", indices=range(0, 4), **kw)
    session.collect(data, path=tmp_path / "b", indices=range(4, 6), **kw)
    out = run(["merge", str(tmp_path / "b"), str(tmp_path / "a"), "--out", str(tmp_path / "ab")])
    assert "NeuronIndex" in out.stdout
    assert_same(NeuronIndex.load(tmp_path / "ab"), NeuronIndex.load(tmp_path / "all"))
    twice = run(["merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "aa")], check=False)
    assert twice.returncode == 2 and "more than one index" in twice.stderr
    again = run(["merge", str(tmp_path / "b"), str(tmp_path / "a"), "--out", str(tmp_path / "all")])  # it IS the one-pass index
    assert again.returncode == 0
    taken = run(["merge", str(tmp_path / "b"), str(tmp_path / "a"), "--out", str(tmp_path / "a")], check=False)
    assert taken.returncode == 2 and "holds another index" in taken.stderr
    bad = run(["info", str(tmp_path / "missing")], check=False)
    assert bad.returncode == 2 and "no such directory" in bad.stderr
    nodata = run(["collect", "--model", str(checkpoint), "--data", "nope:x", "--out", str(tmp_path / "x")], check=False)
    assert nodata.returncode != 0 and "not a folder" in nodata.stderr
    uncached = run(["collect", "--model", "nobody/no-such-llava", "--data", str(images), "--out", str(tmp_path / "y")], check=False)
    assert uncached.returncode == 2 and "pass download=True (on the command line --download)" in uncached.stderr


def write_coco(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(folder / "a.jpg")
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(folder / "b.jpg")
    # an uncompressed RLE: columns of height 40; 40*5 zeros, then 40*3 ones (columns 5..7), rest zeros
    rle = {"size": [40, 30], "counts": [200, 120, 40 * 30 - 320]}
    instances = {
        "images": [{"id": 2, "file_name": "b.jpg", "height": 40, "width": 30}, {"id": 1, "file_name": "a.jpg", "height": 40, "width": 30}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "frisbee"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 2, "segmentation": rle, "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": [[20, 20, 29, 20, 29, 39, 20, 39]], "iscrowd": 0},
        ],
    }
    captions = {"images": instances["images"], "annotations": [
        {"id": 1, "image_id": 1, "caption": "A dog and a frisbee."}, {"id": 2, "image_id": 2, "caption": "A dog."}]}
    (folder / "instances.json").write_text(json.dumps(instances))
    (folder / "captions.json").write_text(json.dumps(captions))
    return folder


@pytest.mark.slow
def test_coco_folder_masks_and_captions(tmp_path, checkpoint):
    folder = write_coco(tmp_path / "coco")
    data = coco(folder / "instances.json", images=folder, captions=folder / "captions.json")
    assert [s.id for s in data] == ["1", "2"]
    a = data[0]
    assert a.caption == "A dog and a frisbee." and a.get_image().size == (30, 40)
    assert a.masks["dog"][:10, :10].all() and not a.masks["dog"][20:, 20:].any()
    assert a.masks["frisbee"][:, 5:8].all() and a.masks["frisbee"].sum() == 120
    assert not (a.masks["background"] & a.masks["dog"]).any()
    shares = a.patch_masks(4, 3)
    assert shares["dog"][0, 0] == pytest.approx(1.0) and shares["dog"][3, 2] == 0
    assert "frisbee" not in data[1].masks
    # compressed RLE string decodes to the same mask as its counts
    from neuronwidgets.datasets.coco import rle_counts_from_string

    assert rle_counts_from_string("0") == [0]
    np.testing.assert_array_equal(decode_segmentation({"size": [40, 30], "counts": [200, 120, 880]}, 40, 30), a.masks["frisbee"])
    out = tmp_path / "idx"
    run([*COLLECT, "--model", str(checkpoint), "--data", str(folder / "instances.json"), "--images", str(folder),
         "--captions", str(folder / "captions.json"), "--out", str(out)])
    index = NeuronIndex.load(out)
    assert index.n_samples == 2
    assert index.dataset is not None and index.dataset[0].masks["dog"].any()


@pytest.mark.slow
def test_torchrun_on_the_toy_model_equals_single_process(tmp_path):
    common = ["collect", "--model", "toy", "--data", "shapes:n=20,seed=3", "--batch-size", "4", "--text", "caption",
              "--top-k", "5", "--random-k", "3"]
    run([*common, "--out", str(tmp_path / "dist")], torchrun=True)
    run([*common, "--out", str(tmp_path / "single")])
    dist, single = NeuronIndex.load(tmp_path / "dist"), NeuronIndex.load(tmp_path / "single")
    assert dist.model == single.model == "neuronwidgets-toy" and dist.n_samples == 20
    assert_same(dist, single)


def test_hugging_face_datasets_object(tiny_session):
    datasets = pytest.importorskip("datasets", reason="the Hugging Face `datasets` package is in the dev extra")
    from neuronwidgets.datasets import hf_dataset
    from neuronwidgets.datasets.shapes import shapes

    src = shapes(n=5, seed=1)
    ds = datasets.Dataset.from_dict({"img": [s.image for s in src], "text": [s.caption for s in src]})
    ds = ds.cast_column("img", datasets.Image())
    with pytest.raises(KeyError, match="'image' not in the dataset; its columns are"):
        hf_dataset(ds)
    data = hf_dataset(ds, image_column="img", caption_column="text")
    assert len(data) == 5 and data[2].caption == src[2].caption
    assert np.array_equal(np.asarray(data[2].image.convert("RGB")), np.asarray(src[2].image.convert("RGB")))
    index = tiny_session.collect(data, top_k=2, random_k=1, text="caption", progress=False)
    assert index.n_samples == 5 and index.sample_id(0) == "hf-0"


@pytest.mark.slow
def test_an_index_collected_again_is_the_same_byte_for_byte(tmp_path):
    """Every file of the folder, safetensors included (its metadata once came out in a per-process order)."""
    args = ["collect", "--model", "toy", "--data", "shapes:n=24,seed=0", "--text", "caption", "--top-k", "4", "--batch-size", "8"]
    for name in ("a", "b"):
        run([*args, "--out", str(tmp_path / name)])
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) >= 7 and files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert [f for f in files if (tmp_path / "a" / f).read_bytes() != (tmp_path / "b" / f).read_bytes()] == []


def test_lazy_samples_load_their_image_on_access(tmp_path):
    from neuronwidgets.datasets import image_folder

    folder = write_images(tmp_path / "images", 2)
    data = image_folder(folder)
    assert data[1].image.size == (32, 32) and data[1].get_image().size == (32, 32)
    assert "image" not in repr(data[1])  # repr does not read the file


def test_folder_annotations_in_a_shape_it_cannot_read_are_refused_by_name(tmp_path):
    from neuronwidgets.datasets import image_folder

    folder = write_images(tmp_path / "images", 2)
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
    notes = folder / "captions.json"
    notes.write_text("{not json")
    with pytest.raises(ValueError, match=r"captions.json' is not valid JSON .*should look like"):
        image_folder(folder)
    notes.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="holds no captions in a shape this reads"):
        image_folder(folder)
    notes.write_text(json.dumps({names[0]: {"caption": 3}}))
    with pytest.raises(ValueError, match=f"caption and prompt of '{names[0]}' must be text"):
        image_folder(folder)
    notes.write_text(json.dumps([{"file": names[1], "caption": "a red circle", "prompt": "USER: <image>\nhi ASSISTANT:"}]),
                     encoding="utf-8-sig")  # with a byte-order mark, as Windows editors write it
    data = image_folder(folder)
    assert [s.caption for s in data] == [None, "a red circle"] and data[1].prompt.endswith("hi ASSISTANT:")


@pytest.mark.slow
def test_explain_scores_concepts_with_and_without_a_held_out_index(tmp_path):
    common = ["--model", "toy", "--batch-size", "16", "--text", "caption", "--top-k", "10", "--random-k", "10"]
    run(["collect", *common, "--data", "shapes:n=80,seed=0", "--out", str(tmp_path / "index")])
    run(["collect", *common, "--data", "shapes:n=40,seed=9", "--out", str(tmp_path / "held")])
    # Without --holdout the concept search leaves the random records alone and scores on them.
    out = run(["explain", str(tmp_path / "index"), "--layers", "0", "--limit", "3"]).stdout
    assert "scoring on the index's random records" in out and "score_random" in out and "exemplars" not in out
    table = NeuronIndex.load(tmp_path / "index").explanations()
    assert len(table) == 3 and table["error"].isna().all() and table["score_random"].notna().all()
    assert table["score_top"].isna().all()  # every top record was read by the search
    # Again with --holdout: the same neurons are scored again, on the held-out index's top and random records.
    run(["explain", str(tmp_path / "index"), "--layers", "0", "--limit", "3", "--holdout", str(tmp_path / "held")])
    table = NeuronIndex.load(tmp_path / "index").explanations()
    assert len(table) == 3 and table["error"].isna().all() and table["score_top"].notna().all()
    assert table["held_out"].str.startswith("holdout:").all()
    bad = run(["explain", str(tmp_path / "index"), "--holdout", str(tmp_path / "index")], check=False)
    assert bad.returncode != 0 and "the index itself" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["collect", "--layers", "7"], "layer 7 is out of range: this model has layers 0..3"),
    (["collect", "--layers", "-9"], "layer -9 is out of range"),
    (["collect", "--layers", "a,b"], "--layers takes comma-separated layer numbers"),
    (["collect", "--limit", "0"], "--limit is how many images to take, so 1 or more"),
    (["collect", "--images", "/nowhere"], "--images and --captions go with a COCO annotation file"),
    (["collect", "--device", "cuda"], "--device and --dtype are for a checkpoint"),
    (["collect", "--data", "nope:x"], "not a folder, a COCO .json file"),
])
def test_bad_collect_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    from neuronwidgets.cli import main

    base = {"--data": "shapes:n=8,seed=0", "--out": str(tmp_path / "x"), "--model": "toy"}
    for flag, value in base.items():
        if flag not in args:
            args = [*args, flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_bad_explain_and_demo_arguments_and_an_llm_without_a_key_exit_2(tmp_path, capsys, monkeypatch):
    from neuronwidgets.cli import main

    collect = ["collect", "--model", "toy", "--data", "shapes:n=24,seed=0", "--text", "caption", "--top-k", "6",
               "--out", str(tmp_path / "i")]
    assert main(collect) == 0
    for args, message in ((["--layers", "9"], "--layers 9 is not in the index"), (["--limit", "0"], "--limit is how many neurons")):
        assert main(["explain", str(tmp_path / "i"), *args]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["explain", str(tmp_path / "i"), "--explainer", "llm", "--limit", "2"]) == 2  # it wrote 2 rows of "no API key"
    err = capsys.readouterr().err
    assert "every neuron failed" in err and "no API key" in err
    assert main(["demo", "--n", "1", "--out", str(tmp_path / "d")]) == 2
    assert "--n must be at least 24" in capsys.readouterr().err
