"""The bundled toy LLaVA: a tiny `LlavaForConditionalGeneration` trained on the Shapes world.

    from neuronwidgets.toy import load_toy, WEIGHTS_DIR
    model, processor = load_toy()          # offline, float32, eval mode, CPU

`python -m neuronwidgets.toy.train` rebuilds the weights from scratch (see train.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def load_toy(path: str | Path | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """(model, processor) of the shipped toy model, loaded from disk without any network."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    path = Path(path).expanduser() if path is not None else WEIGHTS_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no toy weights in {path}: run `python -m neuronwidgets.toy.train`")
    model = LlavaForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    processor = LlavaProcessor.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval(), processor


__all__ = ["WEIGHTS_DIR", "load_toy"]
