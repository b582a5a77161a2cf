"""Session and Trace on a tiny random LLaVA: activations match a hand computation, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from neuronwidgets.model.session import Session
from tests.conftest import PROMPT


def _mlp_inputs(session, image, prompt, continuation=None):
    """Each decoder layer's MLP input from a plain forward pass with our own hooks."""
    enc = session.encode(image, prompt, continuation)
    store, handles = {}, []
    for i, layer in enumerate(session.adapter.decoder_layers()):
        handles.append(layer.mlp.register_forward_pre_hook(lambda m, a, i=i: store.__setitem__(i, a[0].detach().clone())))
    try:
        with torch.no_grad():
            session.model(
                input_ids=torch.tensor([enc.input_ids]),
                pixel_values=enc.pixel_values[None],
            )
    finally:
        for h in handles:
            h.remove()
    return enc, store


@pytest.mark.parametrize("site", ["act", "mlp_in"])
def test_trace_matches_hand_computed_neurons(tiny_session, rgb_image, site):
    trace = tiny_session.trace(rgb_image, PROMPT, continuation="a red circle", site=site)
    enc, inputs = _mlp_inputs(tiny_session, rgb_image, PROMPT, "a red circle")
    assert trace.site == site
    for layer, mlp_layer in enumerate(tiny_session.adapter.decoder_layers()):
        mlp = mlp_layer.mlp
        x = inputs[layer][0]
        with torch.no_grad():
            expected = mlp.act_fn(mlp.gate_proj(x))
            if site == "mlp_in":
                expected = expected * mlp.up_proj(x)
        got = trace.activations(layer)
        assert got.dtype == np.float32
        assert got.shape == (len(enc.input_ids), tiny_session.n_neurons)
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(trace.neuron(layer, 5), expected[:, 5].numpy(), atol=1e-5)


def test_sites_differ(tiny_session, rgb_image):
    a = tiny_session.trace(rgb_image, PROMPT, site="act").activations(0)
    b = tiny_session.trace(rgb_image, PROMPT, site="mlp_in").activations(0)
    assert not np.allclose(a, b)


def test_image_positions_and_grid_match_processor_expansion(tiny_session, rgb_image):
    trace = tiny_session.trace(rgb_image, PROMPT, continuation="a red circle")
    enc = tiny_session.processor(images=Image.fromarray(rgb_image), text=PROMPT, return_tensors="pt")
    ids = enc["input_ids"][0].numpy()
    image_id = tiny_session.model.config.image_token_index
    expected_positions = np.flatnonzero(ids == image_id)
    rows, cols = tiny_session.grid
    assert (rows, cols) == (4, 4)
    assert len(expected_positions) == rows * cols
    img = trace.tokens[trace.tokens.modality == "image"]
    np.testing.assert_array_equal(img.position.to_numpy(), expected_positions)
    np.testing.assert_array_equal(img.row.to_numpy(), np.repeat(np.arange(rows), cols))
    np.testing.assert_array_equal(img.col.to_numpy(), np.tile(np.arange(cols), rows))
    # image_map puts each patch's value at its (row, col)
    values = trace.neuron(1, 7)
    grid = trace.image_map(1, 7)
    assert grid[2, 3] == values[expected_positions[2 * cols + 3]]
    # the continuation's tokens are text, marked as such, and decode to what was given
    cont = trace.tokens[trace.tokens.part == "continuation"]
    assert "".join(cont.token).strip() == "a red circle"
    assert set(trace.tokens.modality) == {"image", "text"}
    assert list(trace.tokens.columns[:7]) == ["position", "token_id", "token", "modality", "part", "row", "col"]


def test_batched_trace_equals_single(tiny_session, rgb_image):
    other = np.flipud(rgb_image).copy()
    prompts = [PROMPT, "USER: <image>\nWhat? ASSISTANT:"]
    batch = tiny_session.trace_batch([rgb_image, other], prompts, layers=[0, 2])
    for img, prompt, tr in zip([rgb_image, other], prompts, batch):
        single = tiny_session.trace(img, prompt, layers=[0, 2])
        assert tr.layers == [0, 2]
        np.testing.assert_allclose(tr.activations(2), single.activations(2), atol=1e-5)
        assert len(tr.tokens) == len(single.tokens)


def test_layers_limit_what_is_recorded(tiny_session, rgb_image):
    trace = tiny_session.trace(rgb_image, PROMPT, layers=[1])
    assert trace.layers == [1]
    with pytest.raises(IndexError, match=r"layer 0 was not recorded.*recorded layers: 1"):
        trace.activations(0)


def test_accepts_pil_array_and_path(tiny_session, rgb_image, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(rgb_image).save(path)
    a = tiny_session.trace(rgb_image, PROMPT, layers=[0]).activations(0)
    b = tiny_session.trace(Image.fromarray(rgb_image), PROMPT, layers=[0]).activations(0)
    c = tiny_session.trace(str(path), PROMPT, layers=[0]).activations(0)
    d = tiny_session.trace(rgb_image.astype(np.float32) / 255.0, PROMPT, layers=[0]).activations(0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(a, d, atol=1e-5)


def test_bad_inputs_raise_clear_errors(tiny_session, rgb_image, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        tiny_session.trace(tmp_path / "nope.png", PROMPT)
    bad = tmp_path / "notanimage.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="notanimage.png"):
        tiny_session.trace(bad, PROMPT)
    with pytest.raises(ValueError, match=r"does not contain the image placeholder '<image>'.*USER: <image>"):
        tiny_session.trace(rgb_image, "What is the red shape?")
    with pytest.raises(ValueError, match="contains 2 times"):
        tiny_session.trace(rgb_image, "USER: <image> <image> hi ASSISTANT:")
    with pytest.raises(ValueError, match="shape"):
        tiny_session.trace(np.zeros((4, 4, 7), np.uint8), PROMPT)
    with pytest.raises(TypeError, match="PIL image"):
        tiny_session.trace(12, PROMPT)
    with pytest.raises(ValueError, match=r"the image is empty \(0x0 pixels\)"):  # was a ZeroDivisionError in the processor
        tiny_session.trace(np.zeros((0, 0), np.uint8), PROMPT)
    with pytest.raises(IndexError, match=r"layer 9 is out of range: this model has layers 0..2"):
        tiny_session.trace(rgb_image, PROMPT, layers=[9])
    trace = tiny_session.trace(rgb_image, PROMPT, layers=[0])
    with pytest.raises(IndexError, match=r"neuron 48 is out of range.*0..47"):
        trace.neuron(0, 48)
    with pytest.raises(IndexError, match="neuron -1"):
        trace.image_map(0, -1)
    with pytest.raises(ValueError, match="unknown neuron site"):
        tiny_session.trace(rgb_image, PROMPT, site="resid")


def test_bad_numbers_and_continuations_raise_clear_errors(tiny_session, rgb_image):
    for layers in ("12", [1.5], [None]):  # "12" was read as layers 1 and 2, 1.5 as 1
        with pytest.raises(TypeError, match="a layer must be a whole number"):
            tiny_session.trace(rgb_image, PROMPT, layers=layers)
    trace = tiny_session.trace(rgb_image, PROMPT, layers=(0, 1.0))
    assert trace.layers == [0, 1]
    with pytest.raises(TypeError, match="neuron must be a whole number"):
        trace.neuron(0, 1.5)
    with pytest.raises(TypeError, match="layer must be a whole number"):
        trace.activations("1")
    assert np.array_equal(trace.neuron(np.int64(1), 2.0), trace.neuron(1, 2))
    vocab = tiny_session.model.get_input_embeddings().num_embeddings
    for ids in ([vocab], [-1]):
        with pytest.raises(ValueError, match="outside the model's vocabulary"):
            tiny_session.trace(rgb_image, PROMPT, continuation=ids)
    with pytest.raises(ValueError, match="continuation holds the image token"):
        tiny_session.trace(rgb_image, PROMPT, continuation="a <image> here")
    assert (tiny_session.trace(rgb_image, PROMPT, continuation="").tokens["part"] == "continuation").sum() == 0
    with pytest.raises(ValueError, match="no images given"):
        tiny_session.trace_batch([], [])
    assert tiny_session.generate_ids([], []) == []


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_encoding_a_batch_equals_encoding_one_input_at_a_time(tiny_session, padding_side):
    """encode_batch makes one processor call for the batch: the same ids and pixels as a call per input."""
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (24 + 8 * i, 32, 3), dtype=np.uint8)) for i in range(4)]
    prompts = [PROMPT, "USER: <image>\nhi ASSISTANT:", "<image> the blue circle is left of", PROMPT]
    continuations = [" a red circle", None, [5, 6, 7], "blue"]
    tok, proc = tiny_session.tokenizer, tiny_session.processor
    side, tok.padding_side = tok.padding_side, padding_side
    try:
        batch = tiny_session.encode_batch(images, prompts, continuations)
    finally:
        tok.padding_side = side
    for enc, image, prompt, cont in zip(batch, images, prompts, continuations):
        alone = proc(images=image, text=prompt, return_tensors="pt")
        ids = alone["input_ids"][0].tolist()
        assert enc.n_prompt == len(ids) and torch.equal(enc.pixel_values, alone["pixel_values"][0])
        if isinstance(cont, str):
            ids += tok(" " + cont.strip(), add_special_tokens=False)["input_ids"]
        elif cont is not None:
            ids += cont
        assert enc.input_ids == ids
    assert tiny_session.encode(images[1], prompts[1]).input_ids == batch[1].input_ids
    pad, tok.pad_token = tok.pad_token, None  # a tokenizer that cannot pad: one call per input, the same result
    try:
        unpadded = tiny_session.encode_batch(images, prompts, continuations)
    finally:
        tok.pad_token = pad
    assert [e.input_ids for e in unpadded] == [e.input_ids for e in batch]
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        tiny_session.encode_batch(images[:2], prompts[:1])


def test_from_pretrained_downloads_nothing_unless_asked(tmp_path):
    """A hub id that is not in the cache is an error that says how to get it, not a 14 GB download."""
    import shutil

    from neuronwidgets.toy import WEIGHTS_DIR

    with pytest.raises(FileNotFoundError, match=r"nobody/no-such-llava.*download=True.*huggingface-cli download"):
        Session.from_pretrained("nobody/no-such-llava")
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache \(local_files_only=True\)"):
        Session.from_pretrained("nobody/no-such-llava", local_files_only=True)
    with pytest.raises(FileNotFoundError, match=r"^no model folder at '.*no-such-folder'$"):
        Session.from_pretrained(tmp_path / "no-such-folder")
    # A hub id in a cache of the caller's (cache_dir): the processor is read from there too.
    repo = tmp_path / "hub" / "models--nobody--toy"
    shutil.copytree(WEIGHTS_DIR, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    session = Session.from_pretrained("nobody/toy", device="cpu", cache_dir=str(tmp_path / "hub"))
    assert session.name == "nobody/toy" and session.n_neurons == Session.toy().n_neurons


def test_unsupported_model_lists_supported_families(tiny_session):
    with pytest.raises(TypeError, match="Supported model families: LLaVA-1.5"):
        Session.from_model(torch.nn.Linear(2, 2), tiny_session.processor)


def test_hooks_are_removed_when_forward_raises(tiny_session, rgb_image):
    layers = tiny_session.adapter.decoder_layers()
    victim = layers[1].mlp.up_proj

    def boom(module, args):
        raise RuntimeError("boom")

    handle = victim.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            tiny_session.trace(rgb_image, PROMPT)
    finally:
        handle.remove()
    for layer in layers:
        assert not layer.mlp.act_fn._forward_hooks
        assert not layer.mlp.down_proj._forward_pre_hooks
    # and the session still works afterwards
    assert tiny_session.trace(rgb_image, PROMPT, layers=[0]).activations(0).shape[1] == 48


def test_generate_returns_answer_text_only(tiny_session, rgb_image):
    answer = tiny_session.generate(rgb_image, PROMPT, max_new_tokens=4)
    assert isinstance(answer, str)
    assert "ASSISTANT" not in answer
    ids = tiny_session.generate_ids([rgb_image, rgb_image], [PROMPT, PROMPT], max_new_tokens=4)
    assert ids[0] == ids[1]


def test_an_answer_never_holds_the_image_token(tiny_session, rgb_image):
    """A model that would emit the image token (a random one may) answers without it, so text="generate" can read it back."""
    from neuronwidgets.datasets import Sample, SampleList

    image_id = tiny_session.adapter.image_token_id

    def favour_image_token(module, args, output):
        output = output.clone()
        output[..., image_id] += 1e4
        return output

    handle = tiny_session.model.lm_head.register_forward_hook(favour_image_token)
    try:
        ids = tiny_session.generate_ids([rgb_image], [PROMPT], max_new_tokens=4)[0]
        assert ids and image_id not in ids
        data = SampleList([Sample(id="a", image=rgb_image, prompt=PROMPT)], name="one", fingerprint="one")
        index = tiny_session.collect(data, text="generate", top_k=1, random_k=0, max_text_tokens=4, progress=False)
        assert index.n_samples == 1
    finally:
        handle.remove()


def test_repr_mentions_site_and_grid(tiny_session, rgb_image):
    assert "site 'act'" in repr(tiny_session)
    assert "4x4 grid" in repr(tiny_session.trace(rgb_image, PROMPT, layers=[0]))


def test_toy_without_weights_says_how_to_rebuild(tmp_path):
    from neuronwidgets import Session

    with pytest.raises(FileNotFoundError, match="config.json missing.*neuronwidgets.toy.train"):
        Session.toy(path=tmp_path)
