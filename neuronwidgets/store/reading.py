"""Reading an index folder's files, each checked against its manifest (a corrupt file is an IndexFormatError)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from neuronwidgets.constants import MODALITIES
from neuronwidgets.store.layout import (
    FORMAT_VERSION,
    MANIFEST,
    MANIFEST_KEYS,
    READABLE_VERSIONS,
    IndexFormatError,
    layer_file,
    writing_folder,
)


def read_manifest(path: Path) -> dict:
    path = Path(path).expanduser()
    pending = writing_folder(path) / MANIFEST
    if pending.exists():  # a write stopped (or is ending) part-way through its moves: the folder may mix two indexes
        raise IndexFormatError(f"{str(path)!r} was being rewritten when that stopped (the new files wait in "
                               f"{str(pending.parent)!r}): run the same collect or merge again to finish it")
    file = path / MANIFEST
    if not path.is_dir():
        raise IndexFormatError(f"{str(path)!r} is not a NeuronIndex folder (no such directory)")
    if not file.exists():
        raise IndexFormatError(f"{str(file)!r} is missing: {str(path)!r} is not a complete NeuronIndex folder")
    manifest = read_json_object(file)
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise IndexFormatError(
            f"{str(file)!r} has format version {version!r}; this neuronwidgets reads versions {readable} "
            f"(and writes {FORMAT_VERSION}). Collect the index again with this version."
        )
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise IndexFormatError(f"{str(file)!r} is corrupt: it lacks {', '.join(missing)}")
    return manifest


def read_json_object(file: Path) -> dict:
    """A manifest's JSON object; anything else (not JSON, a list, a folder) is an IndexFormatError naming the file."""
    try:
        value = json.loads(Path(file).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise IndexFormatError(f"{str(file)!r} is corrupt (not a readable JSON file: {err})") from err
    if not isinstance(value, dict):
        raise IndexFormatError(f"{str(file)!r} is corrupt (a JSON {type(value).__name__}, not the manifest's object)")
    return value


def read_table(file: Path) -> pd.DataFrame:
    if not file.exists():
        raise IndexFormatError(f"{str(file)!r} is missing from the index folder")
    try:
        return pd.read_parquet(file)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise IndexFormatError(f"{str(file)!r} is corrupt ({type(err).__name__}: {err})") from err


def read_layer(path: Path, layer: int, manifest: dict | None = None) -> dict[str, np.ndarray]:
    """One layer's arrays; with the folder's `manifest`, checked to be that layer's of that index (names, shapes)."""
    file = layer_file(Path(path), layer)
    if not file.exists():
        raise IndexFormatError(f"{str(file)!r} is missing from the index folder")
    try:
        with safe_open(str(file), "np") as f:
            note = (f.metadata() or {}).get("neuronwidgets")
        arrays = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise IndexFormatError(f"{str(file)!r} is corrupt ({err})") from err
    if manifest is not None:
        _check_layer_arrays(file, layer, note, arrays, manifest)
    return arrays


def read_layer_arrays(path: Path, layer: int, names: Sequence[str], manifest: dict) -> dict[str, np.ndarray]:
    """Some of one layer's arrays, by name (the rest stay on disk), each checked to hold the manifest's neurons."""
    file = layer_file(Path(path), layer)
    if not file.exists():
        raise IndexFormatError(f"{str(file)!r} is missing from the index folder")
    try:
        with safe_open(str(file), "np") as f:
            missing = sorted(set(names) - set(f.keys()))
            if missing:
                raise IndexFormatError(f"{str(file)!r} is corrupt: it lacks {', '.join(missing)}")
            arrays = {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, IndexFormatError):
            raise
        raise IndexFormatError(f"{str(file)!r} is corrupt ({err})") from err
    axis = {name: 1 if name.startswith("random_") else 0 for name in names}
    for name, array in arrays.items():
        if array.ndim <= axis[name] or array.shape[axis[name]] != manifest["n_neurons"]:
            raise IndexFormatError(f"{str(file)!r} does not fit its manifest: {name} is {'x'.join(map(str, array.shape))}, "
                                   f"for {manifest['n_neurons']} neurons (a layer file of another index?)")
    return arrays


def _check_layer_arrays(file: Path, layer: int, note: str | None, arrays: dict[str, np.ndarray], manifest: dict) -> None:
    """Refuse a layer file that parses but is not this index's layer (copied from another layer or index, or cut short)."""
    try:
        written = json.loads(note) if note else {}
    except json.JSONDecodeError:
        written = {}
    if "layer" in written and written["layer"] != layer:
        raise IndexFormatError(f"{str(file)!r} holds layer {written['layer']}, not layer {layer}: the file was copied or renamed")
    n, k, t = manifest["n_neurons"], manifest["top_k"], manifest["token_k"]
    m = min(manifest["map_k"], k)
    want = {"top_value": (n, k), "top_sample": (n, k), "hist_image": (n, None), "hist_text": (n, None),
            "top_image_codes": (n, m, None), "top_text_codes": (n, m, None), "random_value": (None, n)}
    want.update({f"tok_{mod}_{what}": (n, t) for mod in MODALITIES for what in ("value", "sample", "pos")})
    missing = sorted(set(want) - set(arrays))
    if missing:
        raise IndexFormatError(f"{str(file)!r} is corrupt: it lacks {', '.join(missing)}")
    for name, shape in want.items():
        got = arrays[name].shape
        if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
            expect = "x".join("?" if w is None else str(w) for w in shape)
            raise IndexFormatError(f"{str(file)!r} does not fit its manifest: {name} is {'x'.join(map(str, got))}, "
                                   f"the manifest means {expect} (a layer file of another index?)")


def checked_table(file: Path, table: pd.DataFrame, columns: Sequence[str], rows: int) -> pd.DataFrame:
    """`table` if it has `columns` and `rows` rows, as the manifest says; else an IndexFormatError naming the file."""
    missing = [c for c in columns if c not in table.columns]
    if missing or len(table) != rows:
        what = f"it lacks the columns {', '.join(missing)}" if missing else f"it has {len(table)} rows, the manifest means {rows}"
        raise IndexFormatError(f"{str(file)!r} does not fit its manifest: {what} (a file of another index?)")
    return table
