"""Chat models for explaining and simulating neurons: an OpenAI-compatible client with a disk cache.

    client = nw.llm.OpenAIClient(model="gpt-4o")                       # key from OPENAI_API_KEY
    client = nw.llm.OpenAIClient(model="llava", base_url="http://localhost:8000/v1")   # vLLM, Ollama, ...
    reply = client.chat([{"role": "user", "content": [text_part("hi"), image_part(img)]}])
    client.usage                                                        # tokens spent, cache hits
"""

from neuronwidgets.llm.cache import DiskCache, default_cache_dir, request_key
from neuronwidgets.llm.errors import LLMRequestError
from neuronwidgets.llm.messages import image_part, message, text_part

_LAZY = ("OpenAIClient", "ChatReply", "Usage")


def __getattr__(name: str):
    """The client classes, imported on first use (the `openai` package takes a while to import)."""
    if name in _LAZY:
        from neuronwidgets.llm import client

        return getattr(client, name)
    raise AttributeError(f"module 'neuronwidgets.llm' has no attribute {name!r}")


__all__ = [
    "OpenAIClient",
    "ChatReply",
    "Usage",
    "LLMRequestError",
    "DiskCache",
    "default_cache_dir",
    "request_key",
    "image_part",
    "text_part",
    "message",
]
