"""Building chat messages: text parts and images as PNG data URLs (deterministic, so they hash stably)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from neuronwidgets.render import data_url


def text_part(text: str) -> dict[str, Any]:
    """A text content part of a chat message."""
    return {"type": "text", "text": str(text)}


def image_part(image: Image.Image | str, detail: str = "auto") -> dict[str, Any]:
    """An image content part: a PIL image (sent inline as PNG) or a URL string."""
    url = image if isinstance(image, str) else data_url(image)
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def message(role: str, *parts: dict[str, Any] | str) -> dict[str, Any]:
    """A chat message from text strings and content parts (a lone string stays a plain string)."""
    if len(parts) == 1 and isinstance(parts[0], str):
        return {"role": role, "content": parts[0]}
    return {"role": role, "content": [text_part(p) if isinstance(p, str) else p for p in parts]}


def count_images(messages: list[dict[str, Any]]) -> int:
    """How many image parts a list of messages carries."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return n
