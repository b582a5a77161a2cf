"""OpenAIClient: chat completions through the `openai` package, cached on disk, retried, bounded, counted.

Works against api.openai.com and any OpenAI-compatible server (vLLM, Ollama, llama.cpp's
server, LM Studio) through `base_url`. The API key comes from the `api_key` argument or the
environment (`OPENAI_API_KEY` by default) and lives only in memory: it is never part of a
cache key, a cached file, a repr or a log line. The openai client is made only when a
request has to go out, so a notebook rerun from the cache needs no key at all.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import openai

from neuronwidgets.llm.cache import (
    CONNECTION_PARAMS,
    SAMPLING_PARAMS,
    DiskCache,
    request_key,
)
from neuronwidgets.llm.errors import LLMRequestError
from neuronwidgets.llm.messages import count_images

log = logging.getLogger("neuronwidgets.llm")

#: Errors worth another try: rate limits, timeouts, dropped connections, 5xx.
RETRYABLE = (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError)


def _worth_retrying(err: Exception) -> bool:
    """Rate limits, timeouts, dropped connections, 5xx, and 408/409 (as the openai SDK retries); not a spent quota."""
    if getattr(err, "code", None) == "insufficient_quota":  # a 429 that waiting does not cure
        return False
    return isinstance(err, RETRYABLE) or getattr(err, "status_code", None) in (408, 409)


@dataclass
class Usage:
    """What a client has spent: requests sent, tokens billed, cache hits, retries."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}

    def __str__(self) -> str:
        return (
            f"{self.requests} requests ({self.retries} retries, {self.failures} failed), "
            f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens, "
            f"{self.cache_hits} answered from the cache"
        )


@dataclass
class ChatReply:
    """One chat completion: its text, whether it came from the cache, and its token usage."""

    text: str
    model: str
    cached: bool
    key: str
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


def safe_url(url: str | None) -> str | None:
    """`url` without user:password, query or fragment: fit to show or log."""
    if not url:
        return url
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def url_without_credentials(url: str | None) -> str | None:
    """`url` without user:password and without query parameters that look like credentials (key, token, ...).

    What a copy of a client keeps: unlike `safe_url` it keeps the rest of the query (Azure's api-version).
    """
    if not url:
        return url
    parts = urlsplit(str(url))
    host = parts.netloc.rpartition("@")[2]  # as written: an IPv6 host keeps its brackets
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _CREDENTIAL_NAME.search(k)]
    return urlunsplit((parts.scheme, host, parts.path, urlencode(query), parts.fragment))


_CREDENTIAL_NAME = re.compile(r"key|token|secret|pass|auth|sig|cred", re.IGNORECASE)


def header_safe(value: str, what: str) -> str:
    """`value` without surrounding whitespace, checked to fit an HTTP header; the error never quotes it.

    A key read from a file or pasted from a web page often ends in a line break or holds a
    non-breaking space: the HTTP library would refuse it with the whole header (the key) in its message.
    """
    value = str(value).strip()
    if any(not (" " <= ch <= "~") for ch in value):
        raise LLMRequestError(f"{what} holds a character an HTTP header cannot carry (a line break, a control or a "
                              "non-ASCII character, often copied in with it): check it and pass it again")
    return value


def _safe_headers(headers: dict[str, str] | None, what: str) -> dict[str, str] | None:
    if headers is None:
        return None
    return {name: header_safe(value, f"the {name!r} header of {what}") for name, value in headers.items()}


class OpenAIClient:
    """A chat model behind the OpenAI API, with a disk cache, retries, a concurrency bound and usage counts.

    >>> client = OpenAIClient(model="gpt-4o")                         # OPENAI_API_KEY from the environment
    >>> client = OpenAIClient(model="qwen2-vl", base_url="http://localhost:8000/v1")
    """

    def __init__(
        self,
        model: str = "gpt-4o",
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        max_concurrency: int = 8,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 120.0,
        temperature: float | None = 0.0,
        max_tokens: int | None = 1024,
        default_headers: dict[str, str] | None = None,
        http_client: Any = None,
        **params: Any,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.model = model
        self.base_url = base_url
        self._api_key = api_key
        self._api_key_env = api_key_env
        self.cache = DiskCache(cache_dir) if cache else None
        self.max_concurrency = int(max_concurrency)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = timeout
        self.params = {"temperature": temperature, "max_tokens": max_tokens, **params}
        self.params = {k: v for k, v in self.params.items() if v is not None}
        self._default_headers = _safe_headers(default_headers, "default_headers")
        self._http_client = http_client
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests seen in flight at once
        self.usage = Usage()
        self._sleep = time.sleep

    # --- connection ---------------------------------------------------------------------
    def _openai(self) -> openai.OpenAI:
        with self._lock:
            if self._client is None:
                key = self._api_key or os.environ.get(self._api_key_env)
                if not key:
                    if self.base_url is None:
                        raise LLMRequestError(
                            f"no API key: pass api_key=... or set the {self._api_key_env} environment variable "
                            "(or pass base_url= for a local OpenAI-compatible server that needs none)"
                        )
                    key = "not-needed"  # local servers (vLLM, Ollama, llama.cpp) accept any key
                key = header_safe(key, f"the API key (api_key=... or ${self._api_key_env})")
                self._client = openai.OpenAI(
                    api_key=key,
                    base_url=self.base_url,
                    max_retries=0,  # retries are ours: counted, logged, with jitter
                    timeout=self.timeout,
                    default_headers=self._default_headers,
                    http_client=self._http_client,
                )
            return self._client

    def __repr__(self) -> str:
        where = f", base_url={safe_url(self.base_url)!r}" if self.base_url else ""
        cache = str(self.cache.root) if self.cache is not None else "off"  # (an empty cache is falsy: len 0)
        return f"<OpenAIClient model={self.model!r}{where}, cache={cache!r}, max_concurrency={self.max_concurrency}; {self.usage}>"

    def __getstate__(self):
        """Copies and pickles leave the API key, custom headers, credentials in the URL and the connection behind.

        The key is read from the environment again.
        """
        state = {k: v for k, v in self.__dict__.items() if k not in ("_api_key", "_client", "_lock", "_slots", "_sleep", "_http_client")}
        state["_api_key"] = None
        state["_default_headers"] = None  # custom headers may carry credentials too (Azure's api-key, a proxy's)
        state["base_url"] = url_without_credentials(self.base_url)  # and so may the URL (user:password@, ?api-key=)
        state["params"] = {k: v for k, v in self.params.items() if k not in CONNECTION_PARAMS}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._client, self._http_client, self._sleep = None, None, time.sleep
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_concurrency)

    # --- requests -----------------------------------------------------------------------
    def key(self, messages: list[dict[str, Any]], prompt_version: str = "", **params: Any) -> str:
        """The cache key this request would have."""
        return request_key(self.model, messages, {**self.params, **params}, prompt_version)

    def chat(self, messages: list[dict[str, Any]], *, prompt_version: str = "", refresh: bool = False, **params: Any) -> ChatReply:
        """Send one chat request (or answer it from the cache); `params` override the sampling defaults."""
        params = {**self.params, **params}
        if params.get("extra_headers"):
            params["extra_headers"] = _safe_headers(params["extra_headers"], "extra_headers")
        key = request_key(self.model, messages, params, prompt_version)
        if self.cache is not None and not refresh:
            entry = self.cache.get(key)
            if entry is not None and "text" in entry:
                with self._lock:
                    self.usage.cache_hits += 1
                return ChatReply(entry["text"], entry.get("response_model") or self.model, True, key, entry.get("finish_reason"),
                                 entry.get("usage") or {})
        reply = self._send(messages, params, key)
        # A reply cut off by max_tokens, or an empty one, is not kept: a rerun asks again.
        if self.cache is not None and reply.text and reply.finish_reason != "length":
            self.cache.put(
                key,
                {
                    "key": key,
                    "model": self.model,
                    "response_model": reply.model,
                    "prompt_version": prompt_version,
                    "params": {k: v for k, v in params.items() if k in SAMPLING_PARAMS},
                    "n_messages": len(messages),
                    "n_images": count_images(messages),
                    "text": reply.text,
                    "finish_reason": reply.finish_reason,
                    "usage": reply.usage,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
        return reply

    def forget(self, key: str) -> None:
        """Drop a cached reply that its reader found unusable (it parsed to nothing): the next ask goes to the model."""
        if self.cache is not None:
            self.cache.delete(key)

    def chat_many(self, requests: list[list[dict[str, Any]]], *, prompt_version: str = "", **params: Any) -> list[ChatReply]:
        """Send many chat requests, at most `max_concurrency` in flight; replies in request order."""
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests))) as pool:
            futures = [pool.submit(self.chat, m, prompt_version=prompt_version, **params) for m in requests]
            return [f.result() for f in futures]

    def _delay(self, attempt: int, err: Exception) -> float:
        """Seconds to wait before try `attempt + 1`: the server's Retry-After, else exponential with jitter."""
        response = getattr(err, "response", None)
        headers = getattr(response, "headers", None) or {}
        for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            value = headers.get(name) if hasattr(headers, "get") else None
            if value is not None:
                try:
                    return min(self.max_backoff, max(0.0, float(value) * scale))
                except ValueError:
                    pass
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    def _send(self, messages: list[dict[str, Any]], params: dict[str, Any], key: str) -> ChatReply:
        client = self._openai()
        attempt = 0
        while True:
            try:
                with self._slots:
                    with self._lock:
                        self._in_flight += 1
                        self.max_in_flight = max(self.max_in_flight, self._in_flight)
                        self.usage.requests += 1
                    try:
                        response = client.chat.completions.create(model=self.model, messages=messages, **params)
                    finally:
                        with self._lock:
                            self._in_flight -= 1
            except (*RETRYABLE, openai.APIStatusError) as err:
                if not _worth_retrying(err):
                    with self._lock:
                        self.usage.failures += 1
                    raise LLMRequestError(
                        f"chat request to model {self.model!r} was refused: {type(err).__name__} (HTTP {err.status_code})"
                        + (f", {err.code}" if isinstance(getattr(err, "code", None), str) else "")
                    ) from err
                status = getattr(err, "status_code", None)
                if attempt >= self.max_retries:
                    with self._lock:
                        self.usage.failures += 1
                    raise LLMRequestError(
                        f"chat request to model {self.model!r} failed after {attempt + 1} tries: "
                        f"{type(err).__name__}" + (f" (HTTP {status})" if status else "")
                    ) from err
                delay = self._delay(attempt, err)
                log.warning("model %r: %s%s, retry %d/%d in %.1fs", self.model, type(err).__name__,
                            f" (HTTP {status})" if status else "", attempt + 1, self.max_retries, delay)
                with self._lock:
                    self.usage.retries += 1
                attempt += 1
                self._sleep(delay)
                continue
            break
        usage = {}
        if getattr(response, "usage", None) is not None:
            usage = {
                "prompt_tokens": int(response.usage.prompt_tokens or 0),
                "completion_tokens": int(response.usage.completion_tokens or 0),
            }
        with self._lock:
            self.usage.prompt_tokens += usage.get("prompt_tokens", 0)
            self.usage.completion_tokens += usage.get("completion_tokens", 0)
        if not response.choices:
            raise LLMRequestError(f"model {self.model!r} returned no choices")
        choice = response.choices[0]
        return ChatReply(choice.message.content or "", response.model or self.model, False, key, choice.finish_reason, usage)
