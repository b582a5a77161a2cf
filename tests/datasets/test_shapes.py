"""The Shapes world: deterministic, one right answer per question, masks that match the pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest

from neuronwidgets.datasets.base import (
    DESCRIBE_PROMPT,
    PROMPT_TEMPLATE,
    Sample,
    SampleList,
)
from neuronwidgets.datasets.shapes import (
    COLORS,
    COUNT_WORDS,
    SHAPES,
    SHAPES_WORDS,
    shapes,
)

CAPTION = re.compile(
    r"^a (?P<c>\w+) (?P<s>\w+)((?: left of| above) a \w+ \w+){0,2}$"
)


@pytest.fixture(scope="module")
def data() -> SampleList:
    return shapes(60, seed=3)


def test_deterministic_and_independent_of_n(data):
    again = shapes(60, seed=3)
    longer = shapes(80, seed=3)
    for a, b, c in zip(data, again, longer):
        assert a.id == b.id == c.id
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(np.asarray(a.image), np.asarray(c.image))
        assert a.caption == c.caption and a.qa == c.qa
    other = shapes(5, seed=4)
    assert not np.array_equal(np.asarray(other[0].image), np.asarray(data[0].image))
    tail = shapes(3, seed=3, start=10)
    assert [s.id for s in tail] == [s.id for s in data[10:13]]
    assert np.array_equal(np.asarray(tail[0].image), np.asarray(data[10].image))


def test_sequence_fingerprint_and_ids(data):
    assert len(data) == 60 and isinstance(data[0], Sample)
    assert data.fingerprint == "shapes:n=60,seed=3"
    assert shapes(2, seed=0, image_size=96, grid=6).fingerprint == "shapes:n=2,seed=0,image_size=96,grid=6"
    assert data[7].id == "shapes-3-000007"
    assert len(data[10:20]) == 10
    assert len({s.id for s in data}) == 60


def test_images_and_prompts(data):
    for s in data:
        assert s.image.mode == "RGB" and s.image.size == (64, 64)
        assert s.prompt == DESCRIBE_PROMPT
        for qa in s.qa:
            assert qa.prompt == PROMPT_TEMPLATE.format(question=qa.question)


def test_one_answer_per_question(data):
    seen_counts = set()
    for s in data:
        objs = s.meta["objects"]
        assert 1 <= len(objs) <= 3
        seen_counts.add(len(objs))
        assert len({o["color"] for o in objs}) == len(objs)  # a colour at most once
        assert len({o["shape"] for o in objs}) == len(objs)  # a shape at most once
        assert len({(o["row"], o["col"]) for o in objs}) == len(objs)
        questions = [qa.question for qa in s.qa]
        assert len(questions) == len(set(questions))
        kinds = [qa.kind for qa in s.qa]
        assert kinds.count("color") == kinds.count("shape") == kinds.count("position") == len(objs)
        assert kinds.count("count") == 1
        for qa in s.qa:
            if qa.kind == "color":
                (o,) = [o for o in objs if o["shape"] in qa.question]
                assert qa.answer == o["color"] and qa.answer in COLORS
            elif qa.kind == "shape":
                (o,) = [o for o in objs if qa.question == f"Which shape is {o['color']}?"]
                assert qa.answer == o["shape"] and qa.answer in SHAPES
            elif qa.kind == "count":
                assert qa.answer == COUNT_WORDS[len(objs) - 1]
            elif qa.kind == "position":
                (o,) = [o for o in objs if f"{o['color']} {o['shape']}" in qa.question]
                v = "top" if o["row"] < 2 else "bottom"
                h = "left" if o["col"] < 2 else "right"
                assert qa.answer == f"{v} {h}"
    assert seen_counts == {1, 2, 3}


def test_every_word_is_a_vocabulary_word(data):
    words = set(SHAPES_WORDS)
    for s in data:
        texts = [s.caption, s.prompt] + [qa.prompt for qa in s.qa] + [qa.answer for qa in s.qa]
        for text in texts:
            for w in re.findall(r"[A-Za-z]+", text.replace("<image>", "")):
                assert w in words, (w, text)
    for w in ("USER", "ASSISTANT", "What", "Which", "How", "Where", "Could"):
        assert w in words


def test_caption_grammar_reading_order(data):
    for s in data:
        assert CAPTION.match(s.caption), s.caption
        objs = s.meta["objects"]
        expected = [f"a {o['color']} {o['shape']}" for o in objs]
        parts = re.split(r" left of | above ", s.caption)
        assert parts == expected
        relations = re.findall(r" (left of|above) ", s.caption)
        for prev, nxt, rel in zip(objs, objs[1:], relations):
            assert (prev["row"], prev["col"]) < (nxt["row"], nxt["col"])  # reading order
            assert rel == ("left of" if prev["row"] == nxt["row"] else "above")
    one = next(s for s in data if len(s.meta["objects"]) == 1)
    assert one.caption.count(" a ") == 0


def test_masks_match_pixels(data):
    names = set(COLORS) | set(SHAPES) | {"background"}
    for s in data:
        assert set(s.masks) == names
        img = np.asarray(s.image).astype(int)
        present = {o["color"] for o in s.meta["objects"]} | {o["shape"] for o in s.meta["objects"]}
        union = np.zeros((64, 64), dtype=bool)
        for name, m in s.masks.items():
            assert m.dtype == bool and m.shape == (64, 64)
            if name in names - present - {"background"}:
                assert not m.any()
        for o in s.meta["objects"]:
            m = s.masks[o["color"]]
            assert np.array_equal(m, s.masks[o["shape"]])
            assert m.sum() > 20
            union |= m
            # Mask pixels carry the colour, roughly; and they lie inside the object's cell.
            mean = img[m].mean(axis=0)
            assert np.abs(mean - np.asarray(COLORS[o["color"]])).max() < 40
            rows, cols = np.nonzero(m)
            assert rows.min() >= o["row"] * 16 and rows.max() < (o["row"] + 1) * 16
            assert cols.min() >= o["col"] * 16 and cols.max() < (o["col"] + 1) * 16
        assert np.array_equal(s.masks["background"], ~union)
        # The background is light and greyish: never one of the shape colours.
        bg = img[s.masks["background"]]
        assert bg.min() > 150 and np.abs(bg.mean(axis=0) - bg.mean()).max() < 15


def test_patch_masks_shares(data):
    for s in data[:20]:
        pm = s.patch_masks(4, 4)
        assert pm["red"].shape == (4, 4) and pm["red"].dtype == np.float32
        total = sum(pm[c] for c in COLORS) + pm["background"]
        assert np.allclose(total, 1.0)
        for o in s.meta["objects"]:
            share = pm[o["color"]]
            # The whole shape sits in one patch, and it covers a good part of it.
            assert share[o["row"], o["col"]] >= 0.15
            assert np.count_nonzero(share) == 1
            assert np.array_equal(share, pm[o["shape"]])


def test_shapes_vary(data):
    sizes = [o["bbox"][2] - o["bbox"][0] for s in data for o in s.meta["objects"]]
    assert min(sizes) < max(sizes)
    cells = {(o["row"], o["col"]) for s in data for o in s.meta["objects"]}
    assert len(cells) >= 12
    assert {o["color"] for s in data for o in s.meta["objects"]} == set(COLORS)
    assert {o["shape"] for s in data for o in s.meta["objects"]} == set(SHAPES)


def test_bad_arguments():
    with pytest.raises(ValueError):
        shapes(1, image_size=65, grid=4)
    with pytest.raises(ValueError):
        shapes(1, min_objects=2, max_objects=1)
    with pytest.raises(ValueError, match="0 or more; got n=-1"):
        shapes(-1)



def test_dataset_specs_read_numbers_and_refuse_what_they_cannot():
    from neuronwidgets.datasets import from_spec

    data = from_spec("shapes:n=4,seed=2,min_size=0.5[1:3]")
    assert len(data) == 2 and data[0].id == shapes(n=4, seed=2, min_size=0.5)[1].id
    with pytest.raises(ValueError, match="n must be a whole number, got 'abc'"):
        from_spec("shapes:n=abc")
    with pytest.raises(ValueError, match="n must be a whole number, got '2.5'"):
        from_spec("shapes:n=2.5")
    with pytest.raises(ValueError, match="seed must be 0 or more"):
        from_spec("shapes:n=2,seed=-1")
    assert from_spec("shapes:n=2,min_size=1").fingerprint == shapes(n=2, min_size=1.0).fingerprint == shapes(n=2, min_size=1).fingerprint
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]; shapes takes n, seed"):
        from_spec("shapes:n=3,colour=2")


def test_the_public_shapes_function_can_be_called_twice():
    """It was a lazy wrapper whose first call bound the submodule over it: the second call failed."""
    import neuronwidgets as nw

    first = nw.datasets.shapes(n=3, seed=0)
    second = nw.datasets.shapes(n=3, seed=1)
    assert len(first) == len(second) == 3 and callable(nw.datasets.shapes)
