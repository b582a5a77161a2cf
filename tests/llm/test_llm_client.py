"""OpenAIClient against a local OpenAI-compatible server: images and model sent, cache, retries, bound, no key on disk."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from neuronwidgets.llm import (
    LLMRequestError,
    OpenAIClient,
    image_part,
    message,
    text_part,
)
from tests.llm_server import FakeLLMServer, Reply

SECRET = "sk-test-SECRET-do-not-store-0123456789"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def _image(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))


def _client(server, tmp_path, **kw):
    kw.setdefault("api_key", SECRET)
    return OpenAIClient(model="test-vlm", base_url=server.url, cache_dir=tmp_path / "cache", backoff=0.001, **kw)


def _messages(text="What is in the image?", seed=0):
    return [message("system", "You describe images."), message("user", text_part(text), image_part(_image(seed)))]


def test_request_carries_model_and_images(llm_server, tmp_path):
    llm_server.responder = lambda body: "a noisy square"
    client = _client(llm_server, tmp_path)
    reply = client.chat(_messages())
    assert reply.text == "a noisy square" and not reply.cached
    body = llm_server.requests[0]
    assert body["model"] == "test-vlm"
    parts = body["messages"][1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 1 and urls[0].startswith("data:image/png;base64,")
    assert body["temperature"] == 0.0
    assert llm_server.headers[0]["authorization"] == f"Bearer {SECRET}"
    assert client.usage.requests == 1 and client.usage.prompt_tokens == 11 and client.usage.completion_tokens == 7


def test_cache_prevents_second_request(llm_server, tmp_path):
    client = _client(llm_server, tmp_path)
    first = client.chat(_messages())
    second = client.chat(_messages())
    assert len(llm_server.requests) == 1
    assert second.cached and second.text == first.text and client.usage.cache_hits == 1
    # A new client (a rerun notebook) with no key at all is answered from the same cache.
    rerun = OpenAIClient(model="test-vlm", cache_dir=tmp_path / "cache")
    assert rerun.chat(_messages()).cached and len(llm_server.requests) == 1
    # The key covers the images, the prompt version and the sampling parameters.
    client.chat(_messages(seed=1))
    client.chat(_messages(), prompt_version="v2")
    client.chat(_messages(), temperature=0.5)
    assert len(llm_server.requests) == 4


def test_no_cache_sends_every_time(llm_server, tmp_path):
    client = _client(llm_server, tmp_path, cache=False)
    client.chat(_messages())
    client.chat(_messages())
    assert len(llm_server.requests) == 2 and not (tmp_path / "cache").exists()


def test_rate_limit_and_server_errors_are_retried(llm_server, tmp_path):
    llm_server.script(Reply(status=429, headers={"retry-after": "0"}), Reply(status=503), Reply(text="fine"))
    client = _client(llm_server, tmp_path)
    assert client.chat(_messages()).text == "fine"
    assert len(llm_server.requests) == 3 and client.usage.retries == 2 and client.usage.requests == 3


def test_retries_give_up_with_a_clear_error(llm_server, tmp_path):
    llm_server.script(*[Reply(status=429, headers={"retry-after": "0"})] * 3)
    client = _client(llm_server, tmp_path, max_retries=2)
    with pytest.raises(LLMRequestError, match="after 3 tries.*RateLimitError"):
        client.chat(_messages())
    assert len(llm_server.requests) == 3 and client.usage.failures == 1


def test_client_errors_are_not_retried(llm_server, tmp_path):
    llm_server.script(Reply(status=400))
    client = _client(llm_server, tmp_path)
    with pytest.raises(LLMRequestError, match="HTTP 400"):
        client.chat(_messages())
    assert len(llm_server.requests) == 1


def test_bounded_requests_in_flight(tmp_path):
    with FakeLLMServer() as server:
        server.script(*[Reply(text=f"r{i}", delay=0.15) for i in range(6)])
        client = _client(server, tmp_path, max_concurrency=2)
        replies = client.chat_many([_messages(f"question {i}") for i in range(6)])
    assert len(replies) == 6 and len(server.requests) == 6
    assert server.max_in_flight <= 2 and client.max_in_flight == 2


def test_missing_key_is_a_clear_error(tmp_path):
    client = OpenAIClient(model="gpt-4o", cache_dir=tmp_path)
    with pytest.raises(LLMRequestError, match="OPENAI_API_KEY"):
        client.chat(_messages())


def test_api_key_is_never_written(llm_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    llm_server.script(Reply(status=429, headers={"retry-after": "0"}))
    client = OpenAIClient(model="test-vlm", base_url=llm_server.url.replace("http://", "http://user:pw@"), cache_dir=tmp_path / "c",
                          backoff=0.001)
    client.chat(_messages())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for p in written:
        data = p.read_bytes()
        assert SECRET.encode() not in data and b"user:pw" not in data, p
    assert SECRET not in repr(client) and "pw" not in repr(client)
    assert SECRET not in caplog.text
    import pickle

    assert SECRET.encode() not in pickle.dumps(client)


def test_cut_off_or_empty_replies_are_not_cached(llm_server, tmp_path):
    client = _client(llm_server, tmp_path)
    llm_server.script(Reply(text='{"activations": [1, 2', finish_reason="length"), Reply(text=""))
    assert client.chat(_messages()).text.startswith('{"activations"')
    assert client.chat(_messages()).text == ""  # asked again: the cut-off reply was not kept
    assert client.chat(_messages()).text == "ok"  # and again: the empty one was not kept either
    assert client.chat(_messages()).cached and len(llm_server.requests) == 3


def test_key_covers_every_request_parameter_but_the_connection(tmp_path):
    client = OpenAIClient(model="m", cache_dir=tmp_path / "c")
    base = client.key(_messages())
    assert client.key(_messages(), extra_body={"top_k": 5}) != base
    assert client.key(_messages(), tools=[{"type": "function", "function": {"name": "f"}}]) != base
    assert client.key(_messages(), extra_headers={"api-key": SECRET}, timeout=3) == base


def test_copies_leave_credentials_in_headers_behind(tmp_path):
    import copy
    import pickle

    client = OpenAIClient(model="m", api_key=SECRET, cache_dir=tmp_path / "c", default_headers={"api-key": SECRET},
                          extra_headers={"Authorization": f"Bearer {SECRET}"})
    for other in (copy.deepcopy(client), pickle.loads(pickle.dumps(client))):
        assert SECRET not in repr(other.__dict__)


@pytest.mark.parametrize("bad", [f"{SECRET}\u00a0x", f"sk-{SECRET}\x07", f"{SECRET}\nmore"])
def test_a_key_an_http_header_cannot_carry_is_refused_without_quoting_it(llm_server, tmp_path, bad):
    """The HTTP library would refuse it with the whole Authorization header in its error (and its repr)."""
    client = OpenAIClient(model="test-vlm", base_url=llm_server.url, api_key=bad, cache_dir=tmp_path / "c", max_retries=0)
    with pytest.raises(LLMRequestError, match="HTTP header cannot carry") as err:
        client.chat(_messages())
    chain, e = [], err.value
    while e is not None:
        chain.append(repr(e) + str(e))
        e = e.__cause__ or e.__context__
    assert SECRET not in "".join(chain) and not llm_server.requests
    with pytest.raises(LLMRequestError, match="'api-key' header") as err:
        OpenAIClient(model="m", default_headers={"api-key": bad})
    assert SECRET not in str(err.value)


def test_a_key_with_a_line_break_at_its_end_is_sent_without_it(llm_server, tmp_path):
    """A key read from a file (open('key.txt').read()) ends in a line break: it is stripped, as a user means it."""
    client = OpenAIClient(model="test-vlm", base_url=llm_server.url, api_key=f"{SECRET}\n", cache_dir=tmp_path / "c")
    assert client.chat(_messages(), extra_headers={"X-Trace": " abc \n"}).text == "ok"
    assert llm_server.headers[-1]["authorization"] == f"Bearer {SECRET}" and llm_server.headers[-1]["x-trace"] == "abc"


def test_copies_leave_credentials_in_the_url_behind(tmp_path):
    import pickle

    from neuronwidgets.llm.client import url_without_credentials

    url = f"https://user:{SECRET}@proxy.example:8443/v1?api-version=2024-02-01&api-key={SECRET}&access_token={SECRET}"
    client = OpenAIClient(model="m", base_url=url, cache_dir=tmp_path / "c")
    assert SECRET.encode() not in pickle.dumps(client) and b"user" not in pickle.dumps(client)
    assert pickle.loads(pickle.dumps(client)).base_url == "https://proxy.example:8443/v1?api-version=2024-02-01"
    assert url_without_credentials("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert url_without_credentials(f"http://u:{SECRET}@[::1]:8000/v1") == "http://[::1]:8000/v1"  # IPv6 keeps its brackets


def test_408_is_retried_and_a_spent_quota_is_not(llm_server, tmp_path):
    """As the openai SDK: 408 and 409 are worth another try; a 429 for insufficient_quota never gets better."""
    llm_server.script(Reply(status=408), Reply(text="fine"))
    client = _client(llm_server, tmp_path)
    assert client.chat(_messages()).text == "fine" and client.usage.retries == 1
    llm_server.script(Reply(status=429, code="insufficient_quota"))
    with pytest.raises(LLMRequestError, match=r"refused: RateLimitError \(HTTP 429\), insufficient_quota"):
        client.chat(_messages("another question"))
    assert client.usage.retries == 1  # not retried


def test_repr_shows_an_empty_cache_as_on(tmp_path):
    """An empty DiskCache has len 0: the repr said cache='off' for a client that caches."""
    client = OpenAIClient(model="m", cache_dir=tmp_path / "c")
    assert str(tmp_path / "c") in repr(client) and "cache='off'" in repr(OpenAIClient(model="m", cache=False))
