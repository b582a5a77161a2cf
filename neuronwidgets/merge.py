"""Merge indexes of disjoint parts of one dataset into exactly the index of one pass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from neuronwidgets.index import NeuronIndex, RandomSet, random_key, write_index

#: Manifest keys that must agree for indexes to merge.
MERGE_KEYS = ("format_version", "model", "site", "layers", "n_neurons", "grid", "n_patches", "text", "top_k", "token_k",
              "random_k", "map_k", "map_bits", "max_text_tokens", "seed", "hist_edges")


def check_compatible(indexes: Sequence[NeuronIndex]) -> None:
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


def merge_indexes(indexes: Sequence[NeuronIndex], path: str | Path) -> NeuronIndex:
    indexes = list(indexes)
    if not indexes:
        raise ValueError("nothing to merge")
    check_compatible(indexes)
    m = indexes[0].manifest
    seed, k = m["seed"], m["random_k"]
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
    samples = pd.concat([i.samples for i in indexes], ignore_index=True)
    manifest = {**m, "complete": True}
    manifest["dataset"] = {**m["dataset"]}
    manifest["merged_from"] = [str(i.path) if i.path else "memory" for i in indexes]
    manifest["n_positions"] = int(sum(i.manifest.get("n_positions", i.n_samples) for i in indexes))
    manifest.pop("positions", None)
    write_index(Path(path), manifest, state, samples, RandomSet(k, seed, [(h, s, slot) for h, s, _, slot in random]))
    return NeuronIndex.load(path, dataset=indexes[0]._dataset)
