"""A small OpenAI-compatible chat server for tests: stdlib http.server on 127.0.0.1 in a thread.

It records every request (JSON body and headers), answers scripted replies first (texts or
HTTP errors such as 429), then asks a responder function for the reply text.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    """A scripted answer: a chat reply text, or an HTTP error status with headers."""

    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    finish_reason: str = "stop"
    code: str | None = None  # an error's code, as OpenAI sends it ("insufficient_quota")


def default_responder(body: dict[str, Any]) -> str:
    return "ok"


def completion(text: str, model: str, prompt_tokens: int = 11, completion_tokens: int = 7, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class FakeLLMServer:
    """An OpenAI-compatible `/v1/chat/completions` endpoint on a free local port."""

    def __init__(self, responder: Callable[[dict[str, Any]], str] = default_responder):
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.scripted: deque[Reply] = deque()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    reply = server.scripted.popleft() if server.scripted else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if not self.path.endswith("/chat/completions"):
                        return self._send(404, {"error": {"message": "not found", "type": "not_found"}})
                    if reply is None:
                        reply = Reply(text=server.responder(body))
                    if reply.delay:
                        import time

                        time.sleep(reply.delay)
                    if reply.status != 200:
                        error = {"message": f"status {reply.status}", "type": "test", "code": reply.code}
                        return self._send(reply.status, {"error": error}, reply.headers)
                    return self._send(200, completion(reply.text, body.get("model", ""), finish_reason=reply.finish_reason), reply.headers)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: Reply | str) -> None:
        """Answer the next requests with these replies, in order, before the responder."""
        with self.lock:
            self.scripted.extend(r if isinstance(r, Reply) else Reply(text=r) for r in replies)

    def start(self) -> "FakeLLMServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture()
def llm_server():
    """A running FakeLLMServer, stopped after the test."""
    with FakeLLMServer() as server:
        yield server
