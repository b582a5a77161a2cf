"""The on-disk cache of chat replies, keyed by the request, so a rerun notebook costs nothing.

The key is a sha256 of the model name, the messages (images included, as data URLs), the
sampling parameters and the prompt version. The API key, the base URL and anything else
about the connection are never part of the key nor of a cached file. Files are JSON (no
pickle), one per request, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: Request parameters that change what a model says (and so belong in the key).
SAMPLING_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "response_format",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "n",
    "reasoning_effort",
)


#: Request parameters that only say how to connect (and may carry credentials): never in a key.
CONNECTION_PARAMS = ("extra_headers", "extra_query", "timeout")


def key_params(params: dict[str, Any]) -> dict[str, Any]:
    """What of a request's parameters goes into its key: everything but the connection, sorted."""
    return {k: params[k] for k in sorted(params) if k not in CONNECTION_PARAMS and params[k] is not None}


def default_cache_dir() -> Path:
    """$NEURONWIDGETS_CACHE/llm, else $XDG_CACHE_HOME/neuronwidgets/llm, else ~/.cache/neuronwidgets/llm."""
    root = os.environ.get("NEURONWIDGETS_CACHE")
    if root:
        return Path(root).expanduser() / "llm"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuronwidgets" / "llm"


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any], prompt_version: str = "") -> str:
    """The sha256 hex digest that names one request in the cache."""
    payload = {
        "model": model,
        "messages": messages,
        "params": key_params(params),  # sampling, response format, extra_body, tools...: all change the reply
        "prompt_version": prompt_version,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class DiskCache:
    """JSON files under `root/<first two hex digits>/<key>.json`; missing or corrupt files are misses."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry for `key`, or None."""
        file = self._file(key)
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store `entry` (JSON-able) for `key`, atomically (concurrent writers are harmless)."""
        file = self._file(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entry, fh, ensure_ascii=False, indent=1, sort_keys=True)
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, key: str) -> None:
        """Forget the entry for `key` (none: nothing to do)."""
        self._file(key).unlink(missing_ok=True)

    def __contains__(self, key: str) -> bool:
        return self._file(key).exists()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json")) if self.root.exists() else 0

    def clear(self) -> None:
        """Delete every cached reply under this cache's root."""
        for file in self.root.glob("??/*.json"):
            file.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"<DiskCache {str(self.root)!r}>"
