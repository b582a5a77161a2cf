"""LM-head decoding of neurons: planted neurons decode to their token; chunked decoding equals a full matmul."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from neuronwidgets.decode import (
    COLUMNS,
    KINDS,
    DecodingFormatError,
    NeuronDecoding,
    decode_directions,
    decode_neurons,
    find_parts,
)
from neuronwidgets.decode.lm_head import DEFAULT_CHUNK_BYTES, chunk_rows
from tests.conftest import TINY_WORDS
from tests.decode.helpers import plant_writer, tiny_llama

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_llava():
    from neuronwidgets.toy.build import build_model, build_processor

    processor = build_processor(TINY_WORDS, image_size=32, patch_size=8)
    model = build_model(processor, image_size=32, patch_size=8, text_layers=3, intermediate=48, seed=0)
    with torch.no_grad():
        find_parts(model).norm.weight.copy_(torch.linspace(0.3, 2.0, model.config.text_config.hidden_size))
    return model, processor


def brute_force(model, k: int, fold_input_norm: bool = True) -> dict:
    """Every neuron's full [neurons, vocab] logits in one matmul, then top-k: {(layer, kind): (pid, pval, sid, sval)}."""
    parts = find_parts(model)
    w_u = parts.lm_head.weight.detach().double()
    g = parts.norm.weight.detach().double()
    out = {}
    for layer, module in enumerate(parts.layers):
        mlp = module.mlp
        ln = module.post_attention_layernorm.weight.detach().double() if fold_input_norm else 1.0
        dirs = {"writes": mlp.down_proj.weight.detach().double().T,
                "reads_up": mlp.up_proj.weight.detach().double() * ln,
                "reads_gate": mlp.gate_proj.weight.detach().double() * ln}
        for kind, d in dirs.items():
            logits = (d * g) @ w_u.T
            top = logits.topk(k, dim=1)
            bottom = logits.topk(k, dim=1, largest=False)
            out[(layer, kind)] = (top.indices, top.values, bottom.indices, bottom.values)
    return out


@pytest.mark.parametrize("arch", ["llama", "llava"])
def test_planted_writer_decodes_top1_as_its_token(arch, tiny_llava):
    if arch == "llama":
        model = tiny_llama(seed=1)
        layer, neuron, token, anti = 1, 7, 57, 91
    else:
        model = tiny_llava[0]
        layer, neuron, token, anti = 2, 5, len(tiny_llava[1].tokenizer) - 3, 300
    plant_writer(model, layer, neuron, token)
    plant_writer(model, 0, 3, anti, scale=-1.0)  # minus an unembedding direction: that token is suppressed most
    dec = decode_neurons(model, k=5, kinds=["writes"])
    assert dec.top_tokens(layer, neuron)["token_id"][0] == token
    assert dec.top_tokens(0, 3, direction="suppressed")["token_id"][0] == anti
    assert dec.top_tokens(0, 3)["token_id"].tolist()[0] != anti


def test_the_norm_weight_is_applied_elementwise():
    """A column planted without the norm adjustment need not win; with it (lm_head row / g) it does."""
    model = tiny_llama(seed=2)
    parts = find_parts(model)
    with torch.no_grad():
        parts.norm.weight.copy_(torch.linspace(0.05, 3.0, parts.norm.weight.numel()))
    plant_writer(model, 0, 0, 11)
    dec = decode_neurons(model, k=3, kinds=["writes"], layers=[0])
    assert dec.top_tokens(0, 0)["token_id"][0] == 11
    expected = parts.lm_head.weight.detach() @ (parts.norm.weight.detach() * parts.layers[0].mlp.down_proj.weight[:, 0].detach())
    assert dec.top_tokens(0, 0)["logit"][0] == pytest.approx(float(expected.max()), rel=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
@pytest.mark.parametrize("fold_input_norm", [True, False])
def test_chunked_decoding_equals_a_full_matmul(chunk_size, fold_input_norm):
    model = tiny_llama(seed=3, layers=3)
    k = 6
    dec = decode_neurons(model, k=k, chunk_size=chunk_size, fold_input_norm=fold_input_norm)
    ref = brute_force(model, k, fold_input_norm)
    f = dec.frame
    for (layer, kind), (pid, pval, sid, sval) in ref.items():
        for direction, ids, vals in (("promoted", pid, pval), ("suppressed", sid, sval)):
            rows = f[(f.layer == layer) & (f.kind == kind) & (f.direction == direction)]
            assert len(rows) == ids.numel()
            got_ids = torch.tensor(rows["token_id"].to_numpy()).reshape(ids.shape)
            got_vals = torch.tensor(rows["logit"].to_numpy()).reshape(ids.shape).double()
            assert torch.equal(got_ids, ids.int()), (layer, kind, direction)
            assert torch.allclose(got_vals, vals, rtol=1e-4, atol=1e-6)


def test_decode_directions_in_chunks_matches_one_chunk():
    g = torch.Generator().manual_seed(0)
    dirs, w_u, norm = torch.randn(23, 8, generator=g), torch.randn(50, 8, generator=g), torch.rand(8, generator=g) + 0.5
    whole = decode_directions(dirs, w_u, norm, k=4, chunk_size=23)
    for step in (1, 5, 22):
        parts = decode_directions(dirs, w_u, norm, k=4, chunk_size=step)
        for a, b in zip(whole, parts):
            assert torch.equal(a, b) if a.dtype == torch.int32 else torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_table_is_tidy():
    model = tiny_llama(seed=4)
    dec = decode_neurons(model, k=4)
    f = dec.frame
    assert list(f.columns) == COLUMNS
    n = model.config.intermediate_size
    assert len(f) == model.config.num_hidden_layers * n * len(KINDS) * 2 * 4
    assert set(f.kind.astype(str)) == set(KINDS) and set(f.direction.astype(str)) == {"promoted", "suppressed"}
    one = f[(f.layer == 1) & (f.neuron == 3) & (f.kind == "writes") & (f.direction == "promoted")]
    assert one["rank"].tolist() == [0, 1, 2, 3]
    assert one["logit"].is_monotonic_decreasing
    sup = f[(f.layer == 1) & (f.neuron == 3) & (f.kind == "writes") & (f.direction == "suppressed")]
    assert sup["logit"].is_monotonic_increasing
    assert (f["token"].astype(str) == "<id " + f["token_id"].astype(str) + ">").all()  # no tokenizer given


def test_token_texts_come_from_the_tokenizer(tiny_llava):
    model, processor = tiny_llava
    dec = decode_neurons(model, processor.tokenizer, k=3, layers=[1], kinds=("writes",))
    top = dec.top_tokens(1, 0)
    tok = processor.tokenizer
    for tid, text in zip(top["token_id"], top["token"]):
        if tid < len(tok):
            assert text == tok.convert_ids_to_tokens(int(tid)).replace("\u2581", " ")


def test_save_and_load_beside_an_index_folder(tmp_path):
    model = tiny_llama(seed=5)
    dec = decode_neurons(model, k=3)
    path = dec.save(tmp_path / "runs" / "toy")
    assert path.name == "decoding.parquet" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["decoding.parquet"]  # no temporary left behind
    back = NeuronDecoding.load(tmp_path / "runs" / "toy")
    pd.testing.assert_frame_equal(back.frame, dec.frame)
    assert back.meta == dec.meta
    assert NeuronDecoding.load(path).top_tokens(1, 2).equals(dec.top_tokens(1, 2))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no neuron decoding"):
        NeuronDecoding.load(tmp_path)
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "decoding.parquet")
    with pytest.raises(DecodingFormatError, match="not a neuron decoding"):
        NeuronDecoding.load(tmp_path)
    (tmp_path / "decoding.parquet").write_text("not parquet")
    with pytest.raises(DecodingFormatError, match="not a readable Parquet"):
        NeuronDecoding.load(tmp_path)


def test_queries_and_bad_arguments():
    model = tiny_llama(seed=6)
    dec = decode_neurons(model, k=5, layers=[1], kinds="writes")
    assert dec.layers == [1]
    assert len(dec.top_tokens(1, 0, k=2)) == 2
    lists = dec.token_lists(1, 0, k=2)
    assert set(lists) == {"writes"} and len(lists["writes"]["suppressed"]) == 2
    with pytest.raises(KeyError, match="layer 0 is not in this decoding"):
        dec.top_tokens(0, 0)
    with pytest.raises(KeyError, match="neuron 99 of layer 1"):
        dec.top_tokens(1, 99)
    with pytest.raises(KeyError, match="was not decoded"):
        dec.top_tokens(1, 0, kind="reads_up")
    with pytest.raises(ValueError, match="unknown kind"):
        dec.top_tokens(1, 0, kind="write")
    with pytest.raises(TypeError, match="neuron must be a whole number"):
        dec.top_tokens(1, 1.5)
    with pytest.raises(IndexError, match="layers 0..1"):
        decode_neurons(model, layers=[2])
    assert decode_neurons(model, k=2, layers=[-1, 1], kinds="writes").layers == [1]
    with pytest.raises(ValueError, match="unknown kind"):
        decode_neurons(model, kinds=["writes", "reads"])
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        decode_neurons(model, chunk_size=0)
    with pytest.raises(TypeError, match="cannot find"):
        find_parts(torch.nn.Linear(2, 2))


def test_default_chunk_is_bounded():
    rows = chunk_rows(32000, None)
    assert rows * 32000 * 4 <= DEFAULT_CHUNK_BYTES and rows > 1000


def test_the_toy_session_decodes_all_layers():
    import neuronwidgets as nw

    session = nw.Session.toy()
    dec = decode_neurons(session, k=5)
    assert dec.layers == list(range(session.n_layers))
    assert dec.frame["neuron"].max() == session.n_neurons - 1
    assert dec.top_tokens(0, 0)["token"].map(type).eq(str).all()
