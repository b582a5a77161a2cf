"""A folder of images, with optional captions and prompts from a JSON or CSV file beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from neuronwidgets.datasets.base import DESCRIBE_PROMPT, Sample, SampleList
from neuronwidgets.model.inputs import load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _read_annotations(folder: Path, annotations: str | Path | None) -> dict[str, dict]:
    """{file name: {"caption": ..., "prompt": ...}} from captions.json / captions.csv (or the given file)."""
    candidates = [Path(annotations)] if annotations else [folder / "captions.json", folder / "captions.csv"]
    for file in candidates:
        if not file.exists():
            if annotations:
                raise FileNotFoundError(f"annotation file not found: {str(file)!r}")
            continue
        if file.suffix == ".json":
            return _json_annotations(file)
        frame = pd.read_csv(file)
        if "file" not in frame.columns:
            raise ValueError(f"{str(file)!r} needs a 'file' column (and 'caption' and/or 'prompt')")
        return {r["file"]: {k: v for k, v in r.items() if isinstance(v, str)} for r in frame.to_dict("records")}
    return {}


_JSON_SHAPES = ('{"a.png": "a caption"}, {"a.png": {"caption": "...", "prompt": "..."}} or '
                '[{"file": "a.png", "caption": "...", "prompt": "..."}]')


def _json_annotations(file: Path) -> dict[str, dict]:
    """Captions and prompts by file name from a JSON file in one of the _JSON_SHAPES."""
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark (Windows editors) is read too
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(file)!r} is not valid JSON ({err}); it should look like {_JSON_SHAPES}") from None
    if isinstance(data, dict):
        notes = {k: (v if isinstance(v, dict) else {"caption": v}) for k, v in data.items()}
    elif isinstance(data, list) and all(isinstance(row, dict) and isinstance(row.get("file"), str) for row in data):
        notes = {row["file"]: row for row in data}
    else:
        raise ValueError(f"{str(file)!r} holds no captions in a shape this reads; it should look like {_JSON_SHAPES}")
    for name, note in notes.items():
        bad = {k: v for k, v in note.items() if k in ("caption", "prompt") and v is not None and not isinstance(v, str)}
        if bad:
            raise ValueError(f"{str(file)!r}: the caption and prompt of {name!r} must be text, got {bad!r}")
    return notes


def image_folder(path: str | Path, annotations: str | Path | None = None, prompt: str = DESCRIBE_PROMPT) -> SampleList:
    """Every image in `path` (sorted by name), loaded lazily, with captions/prompts where given."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {str(folder)!r}")
    notes = _read_annotations(folder, annotations)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(folder)!r}")
    samples = []
    for f in files:
        note = notes.get(f.name, {})
        samples.append(
            Sample(
                id=f.name,
                prompt=note.get("prompt") or prompt,
                caption=note.get("caption"),
                meta={"path": str(f)},
                load_image=lambda f=f: load_image(f),
            )
        )
    return SampleList(samples, name=f"folder:{folder}", fingerprint=f"folder:{folder.resolve()}")
