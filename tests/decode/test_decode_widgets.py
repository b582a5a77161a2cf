"""The decoding in the widgets: the card's logit lists, the explorer's clamp panel, the public names, the index folder."""

from __future__ import annotations

import pytest
import torch

import neuronwidgets as nw
import neuronwidgets.widgets as W
from tests.browser.world import XSS, tiny_world
from tests.decode.helpers import count_hooks

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world():
    return tiny_world()


@pytest.fixture(scope="module")
def decoding(world):
    return nw.decode_neurons(world[0], k=4)


def frontend_sends(widget, content, buffers=()):
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": list(buffers)})


def test_public_names():
    assert nw.decode_neurons is nw.decode.decode_neurons
    assert nw.NeuronDecoding is nw.decode.NeuronDecoding and nw.load_decoding is nw.decode.load_decoding
    with nw.clamp(nw.Session.toy(), {(0, 0): 1.0}) as spec:
        assert spec == {0: {0: 1.0}}


def test_card_lists_the_decoded_tokens(world, decoding):
    session, index, data, table = world
    card = W.ExplanationCard(nw.Explanation(layer=1, neuron=3, category="text", text="x"), index=index, decoding=decoding)
    lists = card.logits
    assert set(lists) == {"writes", "reads_up", "reads_gate"}
    want = decoding.top_tokens(1, 3)
    assert [d["token_id"] for d in lists["writes"]["promoted"]] == want["token_id"].tolist()
    assert [d["token"] for d in lists["writes"]["promoted"]] == want["token"].astype(str).tolist()
    assert len(lists["writes"]["suppressed"]) == 4
    card.update(nw.Explanation(layer=0, neuron=2, category="text", text="y"))
    assert card.logits["writes"]["promoted"][0]["token_id"] == int(decoding.top_tokens(0, 2)["token_id"][0])
    bare = W.ExplanationCard(nw.Explanation(layer=1, neuron=3, category="text", text="x"), index=index)
    assert bare.logits == {}  # an in-memory index has no folder to find a decoding in


def test_a_decoding_saved_in_the_index_folder_is_found(world, tmp_path):
    session, _, data, _ = world
    index = session.collect(data[:4], top_k=2, random_k=2, text="caption", progress=False, path=tmp_path / "run")
    dec = nw.decode_neurons(session, k=3, path=index)
    assert (tmp_path / "run" / "decoding.parquet").is_file()
    again = nw.NeuronIndex.load(tmp_path / "run")  # the index still loads with the extra file beside it
    card = W.ExplanationCard({"layer": 1, "neuron": 0, "category": "text", "text": "t"}, index=again)
    assert card.logits["writes"]["promoted"][0]["token_id"] == int(dec.top_tokens(1, 0)["token_id"][0])
    assert W.ExplanationCard({"layer": 1, "neuron": 0, "text": "t"}, index=again, decoding=None).logits == {}


def test_card_html_escapes_token_text(world, tmp_path):
    from neuronwidgets.decode import NeuronDecoding

    _, index, _, _ = world
    frame = nw.decode_neurons(world[0], k=2, layers=[0], kinds="writes").frame.copy()
    frame["token"] = frame["token"].astype(str)
    frame.loc[0, "token"] = XSS
    card = W.ExplanationCard({"layer": 0, "neuron": 0, "text": "t"}, index=index, decoding=NeuronDecoding(frame, {}))
    assert card.logits["writes"]["promoted"][0]["token"] == XSS
    html = card.to_html(tmp_path / "card.html").read_text()
    assert XSS not in html  # the token travels as JSON data, drawn with textContent


def test_explorer_clamp_panel(world, decoding):
    session, index, data, table = world
    ex = W.NeuronExplorer(session, index, explanations=table, layer=1, neuron=5, async_simulation=False,
                          decoding=decoding)
    try:
        assert ex.card["logits"]["writes"]["promoted"][0]["token_id"] == int(decoding.top_tokens(1, 5)["token_id"][0])
        lo, hi, step = ex.clamp_range
        assert lo < 0 < hi and step > 0 and ex.clamp_view == {}
        before = count_hooks(session.model)
        view = ex.clamp(hi)
        assert count_hooks(session.model) == before
        assert ex.clamp_view == view and view["value"] == hi and view["layer"] == 1 and view["neuron"] == 5
        assert len(view["before"]["top"]) == 8 and len(view["after"]["top"]) == 8
        assert view["before"]["answer"] == session.generate(ex._inputs[0][0], ex.prompt, max_new_tokens=12)
        assert view["after"]["answer"] == session.generate(ex._inputs[0][0], ex.prompt, max_new_tokens=12,
                                                           clamp={(1, 5): hi})
        probs = [t["prob"] for t in view["after"]["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-5
        named = view["named"]
        assert [n["token_id"] for n in named] == decoding.top_tokens(1, 5, k=5)["token_id"].tolist()
        assert any(n["after"] != n["before"] for n in named)
        frontend_sends(ex, {"type": "clamp", "value": lo, "clamp_seq": 7})
        assert ex.clamp_view["value"] == lo and ex.clamp_view["seq"] == 7
        frontend_sends(ex, {"type": "clamp", "value": float("nan"), "clamp_seq": 8})
        assert "finite" in ex.status and ex.clamp_view["seq"] == 7
        assert count_hooks(session.model) == before
        ex.neuron = 6  # another neuron: the last clamp no longer applies
        assert ex.clamp_view == {}
    finally:
        ex.close()
