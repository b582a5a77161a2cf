"""Merge indexes of disjoint shards (or disjoint slices) of one dataset into the index of one pass."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from neuronwidgets.datasets.base import Sample, SampleList
from neuronwidgets.reduce.random_set import RandomSet, random_key
from neuronwidgets.reduce.state import LayerState
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
    dataset_entry,
    positions_digest,
    prompts_digest,
)
from neuronwidgets.store.reading import read_json_object

#: Manifest keys that must agree for indexes to merge (the dataset and its prompts are checked apart: see `plan_merge`).
MERGE_KEYS = ("format_version", "model", "site", "layers", "n_neurons", "grid", "n_patches", "text", "top_k", "token_k",
              "random_k", "map_k", "map_bits", "max_text_tokens", "seed", "hist_edges")
#: A slice of a dataset, as SampleList slicing names it: parent[start:stop:1].
_SLICE = re.compile(r"^(?P<parent>.+)\[(?P<start>\d+):(?P<stop>\d+):1\]$")


@dataclass
class MergePlan:
    """How shards map onto the merged index: each shard's sample-number offset, and the merged dataset's entry."""

    offsets: list[int]
    dataset: dict
    prompts: str
    samples: Sequence[Sample] | None  # the merged dataset, where every shard has its own attached
    redrawn_random: bool  # random samples re-drawn under the merged numbering (slices of one dataset)


def _settings_differences(first: NeuronIndex, other: NeuronIndex) -> str:
    diff = [k for k in MERGE_KEYS if first.manifest.get(k) != other.manifest.get(k)]
    return "; ".join(f"{k}: {first.manifest.get(k)!r} vs {other.manifest.get(k)!r}" for k in diff)


def plan_merge(indexes: Sequence[NeuronIndex]) -> MergePlan:
    """Check that the indexes can merge and say how.

    Two ways are exact: shards of one dataset (collect(indices=...), torchrun; same fingerprint,
    disjoint sample numbers), and collections over disjoint slices of one dataset
    (`collect(data[:32])`, `collect(data[32:])`), whose sample numbers are shifted to positions in
    the slice they span together. Different models, sites or settings, different datasets, and
    samples counted twice (overlapping shards) are refused.
    """
    first = indexes[0]
    for other in indexes[1:]:
        detail = _settings_differences(first, other)
        if detail:
            raise ValueError(f"cannot merge {first.path or 'index'} with {other.path or 'index'}: they differ in {detail}")
    prints = [(i.manifest.get("dataset") or {}).get("fingerprint") for i in indexes]
    sample_sets = [set(int(s) for s in i.samples["sample"]) for i in indexes]
    if len(set(prints)) == 1:
        _refuse_overlap(sample_sets, [0] * len(indexes))
        prompts = {i.manifest.get("prompts") for i in indexes}
        if len(prompts) > 1:
            raise ValueError("cannot merge: the shards were collected with different prompts (--prompt)")
        return MergePlan([0] * len(indexes), dict(first.manifest["dataset"]), first.manifest.get("prompts"),
                         first._dataset, redrawn_random=False)
    slices = [_SLICE.match(str(fp)) for fp in prints]
    if not all(slices) or len({s["parent"] for s in slices}) != 1:
        listed = ", ".join(repr(fp) for fp in prints)
        raise ValueError(f"cannot merge: the indexes were collected over different datasets ({listed}); shards merge when they "
                         "come from one dataset (collect(..., indices=...)) or from disjoint slices of one (data[:32], data[32:])")
    ranges = [(int(s["start"]), int(s["stop"])) for s in slices]
    base, top = min(a for a, _ in ranges), max(b for _, b in ranges)
    offsets = [a - base for a, _ in ranges]
    _refuse_overlap(sample_sets, offsets)
    parent = slices[0]["parent"]
    fingerprint = f"{parent}[{base}:{top}:1]"
    order = sorted(range(len(indexes)), key=lambda i: ranges[i][0])
    datasets = [indexes[i]._dataset for i in order]
    contiguous = all(ranges[a][1] == ranges[b][0] for a, b in zip(order, order[1:]))
    samples = None
    if contiguous and all(d is not None for d in datasets):
        samples = SampleList([s for d in datasets for s in d], name=getattr(datasets[0], "name", "samples"), fingerprint=fingerprint)
        prompts = prompts_digest(samples)  # exactly what one pass over the merged slice records
    else:  # without the samples the digest of the whole cannot be recomputed: a digest of the shards' digests
        prompts = "merged:" + hashlib.sha1("".join(str(indexes[i].manifest.get("prompts")) for i in order).encode()).hexdigest()
    return MergePlan(offsets, dataset_entry(fingerprint, top - base), prompts, samples, redrawn_random=True)


def _refuse_overlap(sample_sets: list[set[int]], offsets: list[int]) -> None:
    seen: set[int] = set()
    for mine, offset in zip(sample_sets, offsets):
        mine = {s + offset for s in mine}
        overlap = seen & mine
        if overlap:
            raise ValueError(f"cannot merge: samples {sorted(overlap)[:5]} occur in more than one index (they would be counted "
                             "twice; shards must be disjoint)")
        seen |= mine


def _shift_samples(state: LayerState, offset: int) -> None:
    """Renumber a state's samples by `offset` (empty slots, -1, stay empty)."""
    if offset:
        for name in ("top_sample", "tok_image_sample", "tok_text_sample"):
            arr = state.t[name]
            arr[arr >= 0] += offset


def merge_indexes(indexes: Sequence[NeuronIndex], path: str | Path, overwrite: bool = False) -> NeuronIndex:
    """Merge indexes of disjoint shards of one dataset, or of disjoint slices of one, into `path`.

    The result is the index one pass over the same samples writes: statistics, histograms, top
    samples with their maps and token exemplars alike. One exception: merging slices renumbers
    samples, and the random samples (a bottom-k hash sketch over sample numbers) are then drawn
    again among the shards' random records (the manifest says `random_redrawn`); they are a
    random subset still, but not the one a single pass would keep.
    A folder at `path` holding another index (or files that are not one) is refused unless overwrite.
    """
    indexes = list(indexes)
    if not indexes:
        raise ValueError("nothing to merge")
    plan = plan_merge(indexes)
    path = Path(path).expanduser()
    m = indexes[0].manifest
    seed, k = m["seed"], m["random_k"]
    samples = pd.concat([i.samples.assign(sample=i.samples["sample"] + off) for i, off in zip(indexes, plan.offsets)],
                        ignore_index=True)
    # The manifest of one pass over the shards' samples, in ascending order (what collect(indices=...) records).
    positions = sorted(int(s) for s in samples["sample"])
    manifest = {**m, "complete": True, "dataset": plan.dataset, "prompts": plan.prompts, "n_positions": len(positions),
                "positions": positions_digest(positions),
                "next_batch": -(-len(positions) // m["batch_size"]) if m.get("batch_size") else m.get("next_batch")}
    if plan.redrawn_random:
        manifest["random_redrawn"] = True
    _check_target(path, manifest, overwrite)  # before the merge's work: a refused folder costs nothing
    state = indexes[0].to_state()
    for layer_state in state.values():
        _shift_samples(layer_state, plan.offsets[0])
    random = [(random_key(seed, s + plan.offsets[0]), s + plan.offsets[0], "self", i) for i, s in enumerate(m["random_samples"])]
    for other, offset in zip(indexes[1:], plan.offsets[1:]):
        other_state = other.to_state()
        for layer_state in other_state.values():
            _shift_samples(layer_state, offset)
        theirs = [(random_key(seed, s + offset), s + offset, "other", i) for i, s in enumerate(other.manifest["random_samples"])]
        candidates = random + theirs
        random = sorted(candidates)[:k]
        take = [(src, i) for _, _, src, i in random]
        for layer in state:
            state[layer].merge(other_state[layer], take)
        random = [(h, s, "self", slot) for slot, (h, s, _, _) in enumerate(random)]
    write_index(path, manifest, state, samples, RandomSet(k, seed, [(h, s, slot) for h, s, _, slot in random]))
    dataset = plan.samples if plan.samples is not None else (indexes[0]._dataset if not plan.redrawn_random else None)
    return NeuronIndex.load(path, dataset=dataset)


def _check_target(path: Path, manifest: dict, overwrite: bool) -> None:
    """Refuse to replace another index, or a folder of other files, at `path` (a rerun of the same merge may)."""
    finish_interrupted_write(path)
    if not path.is_dir():
        return
    if (path / MANIFEST).exists():
        diff = collection_differences(read_json_object(path / MANIFEST), manifest, (*MERGE_KEYS, "dataset", "prompts", "positions"))
        if diff and not overwrite:
            raise IndexFormatError(f"{str(path)!r} holds another index (differs in: {', '.join(diff)}): choose another folder, "
                                   "or pass overwrite=True (--overwrite on the command line) to replace it")
    elif not overwrite and holds_other_files(path):
        raise IndexFormatError(f"{str(path)!r} holds files but no NeuronIndex (no {MANIFEST}): choose a new or empty folder, "
                               "or pass overwrite=True (--overwrite on the command line) to write the index into it")
