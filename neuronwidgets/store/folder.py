"""Writing an index folder safely: a temporary folder moved in, the manifest last; interrupted moves finished."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import save_file

from neuronwidgets.reduce.random_set import RandomSet
from neuronwidgets.reduce.state import LayerState
from neuronwidgets.store.codec import state_to_arrays
from neuronwidgets.store.layout import (
    EXPLANATIONS,
    FORMAT_VERSION,
    MANIFEST,
    IndexFormatError,
    collection_differences,
    layer_file,
    writing_folder,
)
from neuronwidgets.store.reading import read_json_object


def write_index(path: Path, manifest: dict, layers: dict[int, LayerState], samples: pd.DataFrame, random: RandomSet) -> None:
    """Write a whole index folder: into a temporary folder first, then moved in place, the manifest last.

    A kill at any point leaves the old index, the new one, or a move to finish (`finish_interrupted_write`).
    """
    path = Path(path).expanduser()
    finish_interrupted_write(path)
    tmp = writing_folder(path)
    (tmp / "layers").mkdir(parents=True)
    canon = random.canonical()
    manifest = dict(manifest)
    manifest["random_samples"] = [int(s) for _, s, _ in canon]
    manifest["n_samples"] = int(len(samples))
    stats_frames = []
    for layer, state in sorted(layers.items()):
        arrays, stats = state_to_arrays(state, [slot for _, _, slot in canon], manifest.get("map_k"))
        # One metadata entry: safetensors writes several in an order that changes from process to process,
        # and one keeps an index folder byte for byte the same when collected again.
        note = json.dumps({"format_version": FORMAT_VERSION, "layer": int(layer)}, sort_keys=True)
        save_file(arrays, str(layer_file(tmp, layer)), metadata={"neuronwidgets": note})
        stats_frames.append(pd.DataFrame({"layer": layer, "neuron": np.arange(state.n), **stats}))
    pd.concat(stats_frames, ignore_index=True).to_parquet(tmp / "stats.parquet", index=False)
    samples.sort_values("sample").reset_index(drop=True).to_parquet(tmp / "samples.parquet", index=False)
    (tmp / (MANIFEST + ".part")).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (tmp / (MANIFEST + ".part")).replace(tmp / MANIFEST)  # from here on the temporary folder is a whole index
    finish_interrupted_write(path)


def set_aside_explanations(path: Path) -> None:
    """Move the explanations table of an index replaced by another collection out of the way (with a warning).

    Its rows explain the old index's neurons; left in place, `explain` would skip every neuron as done.
    A table set aside before is kept: each gets a name of its own.
    """
    table = Path(path) / EXPLANATIONS
    if not table.exists():
        return
    aside, n = table.with_name("explanations.replaced.parquet"), 1
    while aside.exists():
        n += 1
        aside = table.with_name(f"explanations.replaced-{n}.parquet")
    table.replace(aside)
    warnings.warn(f"{str(table)!r} explained the index being replaced: moved to {aside.name!r} (explain the new index again)",
                  stacklevel=2)



#: What a folder without a manifest may hold before an index is written into it: a torchrun job's shards/, and a
#: neuron decoding (it depends on the model alone, so it may be made before the collection; the write leaves it).
INDEX_COMPANIONS = ("shards", "decoding.parquet")


def holds_other_files(path: Path) -> bool:
    """Whether a folder without a manifest holds anything an index may not replace (see INDEX_COMPANIONS)."""
    return Path(path).is_dir() and any(p.name not in INDEX_COMPANIONS for p in Path(path).iterdir())




def finish_interrupted_write(path: Path) -> None:
    """Bring `path` to one whole index after a write was killed: finish moving a complete new one in, or drop a partial one.

    The new index's files are moved over the old ones' (files of other kinds, such as
    explanations.parquet, stay), the manifest last: until it moves, `path`'s manifest is the
    old one and the rest may be new, so the move is finished before anything reads `path`.
    """
    path = Path(path).expanduser()
    tmp = writing_folder(path)
    if not tmp.exists():
        return
    if not (tmp / MANIFEST).exists():  # killed while writing it: the old index was not touched
        shutil.rmtree(tmp)
        return
    path.mkdir(parents=True, exist_ok=True)
    old = path / MANIFEST
    if old.exists():
        try:
            replaced = collection_differences(read_json_object(old), read_json_object(tmp / MANIFEST))
        except IndexFormatError:  # an unreadable old manifest: whatever it described is replaced
            replaced = ["manifest"]
        if replaced:
            set_aside_explanations(path)  # a different index takes the folder: its explanations go with the old one
    for item in sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST):  # the manifest last
        target = path / item.name
        if item.is_dir() and target.exists():
            shutil.rmtree(target)
        item.replace(target)
    shutil.rmtree(tmp)
