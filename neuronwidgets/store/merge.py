"""Merge indexes of disjoint parts of one dataset into exactly the index of one pass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from neuronwidgets.reduce.random_set import RandomSet, random_key
from neuronwidgets.store.folder import (
    finish_interrupted_write,
    holds_other_files,
    write_index,
)
from neuronwidgets.store.index import NeuronIndex
from neuronwidgets.store.layout import (
    MANIFEST,
    IndexFormatError,
    collection_differences,
    positions_digest,
)
from neuronwidgets.store.reading import read_json_object

#: Manifest keys that must agree for indexes to merge.
MERGE_KEYS = ("format_version", "model", "site", "layers", "n_neurons", "grid", "n_patches", "text", "top_k", "token_k",
              "random_k", "map_k", "map_bits", "max_text_tokens", "seed", "hist_edges", "dataset", "prompts")


def check_compatible(indexes: Sequence[NeuronIndex]) -> None:
    """A clear error unless the indexes come from one collection set-up over disjoint samples."""
    first = indexes[0]
    for other in indexes[1:]:
        diff = [k for k in MERGE_KEYS if first.manifest.get(k) != other.manifest.get(k)]
        if diff:
            detail = "; ".join(f"{k}: {first.manifest.get(k)!r} vs {other.manifest.get(k)!r}" for k in diff)
            raise ValueError(f"cannot merge {first.path or 'index'} with {other.path or 'index'}: they differ in {detail}")
    seen: set[int] = set()
    for idx in indexes:
        mine = set(int(s) for s in idx.samples["sample"])
        overlap = seen & mine
        if overlap:
            raise ValueError(f"cannot merge: samples {sorted(overlap)[:5]} occur in more than one index (shards must be disjoint)")
        seen |= mine


def merge_indexes(indexes: Sequence[NeuronIndex], path: str | Path, overwrite: bool = False) -> NeuronIndex:
    """Merge indexes of disjoint shards of one dataset into `path`: exactly the index one pass over them writes.

    A folder at `path` holding another index (or files that are not one) is refused unless overwrite.
    """
    indexes = list(indexes)
    if not indexes:
        raise ValueError("nothing to merge")
    check_compatible(indexes)
    path = Path(path).expanduser()
    m = indexes[0].manifest
    seed, k = m["seed"], m["random_k"]
    samples = pd.concat([i.samples for i in indexes], ignore_index=True)
    # The manifest of one pass over the shards' samples, in ascending order (what collect(indices=...) records).
    positions = sorted(int(s) for s in samples["sample"])
    manifest = {**m, "complete": True, "dataset": {**m["dataset"]}, "n_positions": len(positions), "positions": positions_digest(positions),
                "next_batch": -(-len(positions) // m["batch_size"]) if m.get("batch_size") else m.get("next_batch")}
    _check_target(path, manifest, overwrite)  # before the merge's work: a refused folder costs nothing
    state = indexes[0].to_state()
    random = [(random_key(seed, s), s, "self", i) for i, s in enumerate(m["random_samples"])]
    for other in indexes[1:]:
        other_state = other.to_state()
        candidates = random + [(random_key(seed, s), s, "other", i) for i, s in enumerate(other.manifest["random_samples"])]
        random = sorted(candidates)[:k]
        take = [(src, i) for _, _, src, i in random]
        for layer in state:
            state[layer].merge(other_state[layer], take)
        random = [(h, s, "self", slot) for slot, (h, s, _, _) in enumerate(random)]
    write_index(path, manifest, state, samples, RandomSet(k, seed, [(h, s, slot) for h, s, _, slot in random]))
    return NeuronIndex.load(path, dataset=indexes[0]._dataset)


def _check_target(path: Path, manifest: dict, overwrite: bool) -> None:
    """Refuse to replace another index, or a folder of other files, at `path` (a rerun of the same merge may)."""
    finish_interrupted_write(path)
    if not path.is_dir():
        return
    if (path / MANIFEST).exists():
        diff = collection_differences(read_json_object(path / MANIFEST), manifest, (*MERGE_KEYS, "positions"))
        if diff and not overwrite:
            raise IndexFormatError(f"{str(path)!r} holds another index (differs in: {', '.join(diff)}): choose another folder, "
                                   "or pass overwrite=True (--overwrite on the command line) to replace it")
    elif not overwrite and holds_other_files(path):
        raise IndexFormatError(f"{str(path)!r} holds files but no NeuronIndex (no {MANIFEST}): choose a new or empty folder, "
                               "or pass overwrite=True (--overwrite on the command line) to write the index into it")
