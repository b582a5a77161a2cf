"""Fixtures for the explain tests: the fake OpenAI-compatible chat server (tests/llm_server.py)."""

from tests.llm_server import llm_server  # noqa: F401  (a fixture: pytest finds it in this conftest)
