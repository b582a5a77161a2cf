"""The LLM explainer and simulator against a local OpenAI-compatible server: requests, strict parsing, re-asks, scoring."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from neuronwidgets.datasets.shapes import shapes
from neuronwidgets.explain import (
    Explainer,
    Explanation,
    SimulationParseError,
    Simulator,
    explain_all,
    parse_activations,
    score,
)
from neuronwidgets.explain.prompts import EXPLAIN_VERSION
from neuronwidgets.llm import OpenAIClient
from tests.explain.test_explain import BLUE, RED, WORD, FakeIndex
from tests.llm_server import Reply

SECRET = "sk-test-SECRET-explain-9876543210"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="module")
def world():
    data = shapes(n=60, seed=5)
    return data, FakeIndex(data[:40], top_k=12, random_k=6), FakeIndex(data[40:], top_k=8, random_k=6, seed=2)


def _client(server, tmp_path, **kw):
    return OpenAIClient(model="test-vlm", base_url=server.url, api_key=SECRET, cache_dir=tmp_path / "llm", backoff=0.001, **kw)


def _user_parts(body):
    content = body["messages"][1]["content"]
    return [content] if isinstance(content, str) else content


def _user_text(body):
    return "\n".join(p if isinstance(p, str) else p.get("text", "") for p in _user_parts(body))


def _images(body):
    return [p for p in _user_parts(body) if isinstance(p, dict) and p["type"] == "image_url"]


def fake_model(body) -> str:
    """A stand-in chat model: short explanations, and simulations of the asked shape (values from a hash)."""
    text = _user_text(body)
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
    grid = re.search(r"grid of (\d+) rows and (\d+) columns", text)
    tokens = re.search(r"The text has (\d+) tokens", text)
    if grid:
        r, c = int(grid.group(1)), int(grid.group(2))
        vals = [[digest[(i * c + j) % 32] % 11 for j in range(c)] for i in range(r)]
        return json.dumps({"activations": vals})
    if tokens:
        return json.dumps({"activations": [digest[i % 32] % 11 for i in range(int(tokens.group(1)))]})
    return f"Explanation: shapes of kind {digest[0] % 7}."


# --- the explainer ------------------------------------------------------------------------------
def test_explainer_shows_images_of_a_visual_neuron(llm_server, world, tmp_path):
    _, index, _ = world
    llm_server.responder = lambda body: 'Explanation: "Red shapes."'
    exp = Explainer(_client(llm_server, tmp_path), n_images=4).explain(index, 0, RED)
    body = llm_server.requests[0]
    assert body["model"] == "test-vlm" and len(_images(body)) == 4
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in _images(body))
    assert "Image example 4" in _user_text(body) and "Text example" not in _user_text(body)
    assert exp.text == "Red shapes" and exp.category == "visual" and exp.model == "test-vlm"
    assert exp.prompt_version == EXPLAIN_VERSION and exp.explainer == "llm"
    assert exp.exemplars == [r.sample_id for r in index.records(0, RED)[:4]]
    assert exp.extra["raw_reply"] == 'Explanation: "Red shapes."'


def test_explainer_shows_tokens_of_a_text_neuron(llm_server, world, tmp_path):
    _, index, _ = world
    exp = Explainer(_client(llm_server, tmp_path), n_texts=3).explain(index, 0, WORD)
    body = llm_server.requests[0]
    assert not _images(body) and exp.category == "text"
    text = _user_text(body)
    assert "Text example 3" in text and " square\t10" in text and "Text example 4" not in text


def test_explainer_shows_both_for_a_multimodal_neuron(llm_server, world, tmp_path):
    _, index, _ = world
    exp = Explainer(_client(llm_server, tmp_path), n_images=2, n_texts=2).explain(index, 0, RED, category="multi-modal")
    body = llm_server.requests[0]
    assert len(_images(body)) == 2 and "Text example 2" in _user_text(body) and exp.category == "multi-modal"


# --- the simulator ----------------------------------------------------------------------------
def test_simulator_request_and_reply(llm_server, world, tmp_path):
    _, _, held = world
    rec = held.records(0, RED)[0]
    llm_server.script(json.dumps({"activations": [[0, 1, 2, 3]] * 4}), "```json\n[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,10]\n```")
    sim = Simulator(_client(llm_server, tmp_path), held)
    exp = Explanation(0, RED, text="red shapes")
    out = sim.simulate(exp, rec, "image")
    assert out.tolist() == [0, 1, 2, 3] * 4
    body = llm_server.requests[0]
    assert len(_images(body)) == 1 and "grid of 4 rows and 4 columns" in _user_text(body) and "red shapes" in _user_text(body)
    out = sim.simulate(Explanation(0, RED, text="red things"), rec, "image")
    assert out.tolist() == [0] * 15 + [10]
    llm_server.script(json.dumps({"activations": [0] * (len(rec.text_tokens) - 1) + [7]}))
    out = sim.simulate(exp, rec, "text")
    assert out[-1] == 7 and len(out) == len(rec.text_tokens)
    assert "The text has" in _user_text(llm_server.requests[-1]) and not _images(llm_server.requests[-1])


def test_malformed_reply_is_asked_again_then_raises(llm_server, world, tmp_path):
    _, _, held = world
    rec = held.records(0, RED)[0]
    llm_server.script("I think row 0 is bright.", '{"activations": [[1, 2, 3]]}')
    sim = Simulator(_client(llm_server, tmp_path), held)
    with pytest.raises(SimulationParseError, match="asked again") as info:
        sim.simulate(Explanation(0, RED, text="red"), rec, "image")
    assert info.value.raw_reply == '{"activations": [[1, 2, 3]]}'
    assert info.value.replies == ["I think row 0 is bright.", '{"activations": [[1, 2, 3]]}']
    assert len(llm_server.requests) == 2
    again = llm_server.requests[1]["messages"]
    assert again[-2] == {"role": "assistant", "content": "I think row 0 is bright."}
    assert "could not be used" in again[-1]["content"] and "no JSON" in again[-1]["content"]


def test_malformed_then_good_reply(llm_server, world, tmp_path):
    _, _, held = world
    rec = held.records(0, RED)[0]
    llm_server.script('{"activations": [[11, 0, 0, 0]]}', json.dumps({"activations": [[5] * 4] * 4}))
    out = Simulator(_client(llm_server, tmp_path), held).simulate(Explanation(0, RED, text="red"), rec, "image")
    assert out.tolist() == [5] * 16 and len(llm_server.requests) == 2


@pytest.mark.parametrize("reply, problem", [
    ('{"activations": [[1, 2], [3, 11]]}', "outside 0-10"),
    ('{"activations": [[1, 2], [3, -1]]}', "outside 0-10"),
    ('{"activations": [[1, 2], [3]]}', "row 1 has 1 values"),
    ('{"activations": [[1, 2], [3, true]]}', "not a number"),
    ('{"activations": [[1, 2], [3, "4"]]}', "not a number"),
    ('{"activations": [1, 2, 3]}', "got 3 values"),
    ('{"values": [1, 2, 3, 4]}', "no \\\"activations\\\" key"),
    ("no json here", "no JSON"),
    ('{"activations": [[1, 2], [3, 4], [5, 6]]}', "got 3 rows"),
])
def test_parse_is_strict(reply, problem):
    with pytest.raises(ValueError, match=problem):
        parse_activations(reply, (2, 2))


def test_parse_accepts_the_asked_forms():
    assert parse_activations('{"activations": [[1, 2], [3, 4]]}', (2, 2)).tolist() == [1, 2, 3, 4]
    assert parse_activations("Sure:\n[1, 2, 3, 4.5]", (2, 2)).tolist() == [1, 2, 3, 4.5]
    assert parse_activations('{"activations": [0, 10, 3]}', (3,)).tolist() == [0, 10, 3]


# --- scoring and batches with the LLM family ----------------------------------------------------------
def test_llm_score_counts_unparsed_and_reruns_free(llm_server, world, tmp_path):
    _, index, held = world
    bad = {r.sample_id for r in held.records(0, RED)[:2]}

    def responder(body):
        text = _user_text(body)
        if any(m["role"] == "assistant" for m in body["messages"]) or ("grid of" in text and _is_bad(body)):
            return "sorry, I cannot"
        return fake_model(body)

    def _is_bad(body):
        img = _images(body)[0]["image_url"]["url"]
        return img in bad_urls

    from neuronwidgets.render import data_url, patch_grid

    bad_urls = {data_url(patch_grid(s.image, 4, 4, min_side=384)) for s in held.dataset if s.id in bad}
    llm_server.responder = responder
    client = _client(llm_server, tmp_path, max_concurrency=3)
    exp = Explainer(client).explain(index, 0, RED)
    result = score(exp, index, Simulator(client), holdout=held)
    assert result.n_unparsed == 2 and result.baseline_n_unparsed == 2
    assert result.per_input["simulated"].isna().sum() == 2 and np.isfinite(result.score)
    assert result.baseline_explanation is not None and result.baseline_explanation.neuron != RED
    assert result.baseline_explanation.text != exp.text and result.simulator == "llm"
    sent = len(llm_server.requests)
    assert client.usage.requests == sent and client.usage.prompt_tokens == 11 * sent
    # A rerun (a new client on the same cache) sends nothing and gets the same numbers.
    rerun = OpenAIClient(model="test-vlm", base_url=llm_server.url, cache_dir=tmp_path / "llm")
    exp2 = Explainer(rerun).explain(index, 0, RED)
    again = score(exp2, index, Simulator(rerun), holdout=held)
    assert len(llm_server.requests) == sent and rerun.usage.requests == 0 and rerun.usage.cache_hits > 0
    assert again.score == result.score and again.baseline == result.baseline
    assert exp2.prompt_version == EXPLAIN_VERSION


def test_llm_explain_all_writes_no_key_anywhere(llm_server, world, tmp_path, monkeypatch):
    data, _, held = world
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("NEURONWIDGETS_CACHE", str(tmp_path / "nwcache"))
    llm_server.responder = fake_model
    index = FakeIndex(data[:40], top_k=12, random_k=6, path=tmp_path / "index")
    client = OpenAIClient(model="test-vlm", base_url=llm_server.url)
    table = explain_all(index, neurons=[(0, RED), (0, BLUE), (0, WORD)], explainer=Explainer(client, n_images=2),
                        simulator=Simulator(client), holdout=held, progress=False)
    assert len(table) == 3 and table["error"].isna().all() and table["score"].notna().all()
    assert (table["baseline_neuron"] != table["neuron"]).all()
    assert llm_server.headers[0]["authorization"] == f"Bearer {SECRET}"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and any(p.suffix == ".json" for p in written)
    for p in written:
        assert SECRET.encode() not in p.read_bytes(), p
    assert SECRET not in repr(client) and SECRET not in table.to_json()


def test_simulator_asks_for_room_for_a_large_grid(llm_server, tmp_path):
    """LLaVA-1.5's 24x24 grid needs ~1,700 reply tokens: more than the client's default max_tokens."""
    from PIL import Image

    from neuronwidgets.datasets.base import Sample

    llm_server.responder = fake_model
    client = _client(llm_server, tmp_path)
    sample = Sample(id="big", image=Image.new("RGB", (336, 336), (200, 30, 30)))
    out = Simulator(client).simulate(Explanation(0, 0, text="red"), sample, "image", sample=sample, grid=(24, 24))
    assert out.shape == (576,)
    assert llm_server.requests[-1]["max_tokens"] >= 4 * 576
    small = Simulator(client).simulate(Explanation(0, 0, text="red"), sample, "image", sample=sample, grid=(4, 4))
    assert small.shape == (16,) and llm_server.requests[-1]["max_tokens"] == 1024


@pytest.mark.parametrize("reply, text", [
    ("Explanation:\nred shapes", "red shapes"), ("```\nred shapes\n```", "red shapes"), ("**Explanation:** red shapes", "red shapes"),
    ("This neuron responds to: red shapes", "red shapes"), ("'circle' and 'square'", "'circle' and 'square'"),
    ("Sure! Here is my analysis of the neuron.\n\nred circles", "red circles"), ('"the word circle."', "the word circle"),
    ("answers to questions", "answers to questions"), ("ok", "ok"),
])
def test_explanations_are_read_from_the_forms_models_wrap_them_in(reply, text):
    from neuronwidgets.explain.prompts import clean_explanation

    assert clean_explanation(reply) == text


def test_an_unusable_explanation_is_not_kept_and_a_retry_asks_again(llm_server, world, tmp_path):
    """Cut off, empty after cleaning, or an essay: an error for the row, and the cache forgets it (else every retry reads it back)."""
    from neuronwidgets.explain import ExplanationError

    _, index, _ = world
    client = _client(llm_server, tmp_path)
    for reply, problem in ((Reply(text="round shapes and the words nam", finish_reason="length"), "was cut off"),
                           (Reply(text="```\n```"), "is empty"), (Reply(text="word " * 50), "is 50 words long")):
        llm_server.script(reply)
        with pytest.raises(ExplanationError, match=problem):
            Explainer(client).explain(index, 0, RED)
    llm_server.script(Reply(text="red shapes"))
    assert Explainer(client).explain(index, 0, RED).text == "red shapes"  # asked again, not read from the cache
    assert len(llm_server.requests) == 4
