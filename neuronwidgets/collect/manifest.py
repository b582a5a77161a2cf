"""What identifies a collection run (its manifest) and whether a folder holds it (reuse, resume, refuse)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from neuronwidgets.reduce.moments import HIST_EDGES
from neuronwidgets.store.folder import finish_interrupted_write, holds_other_files
from neuronwidgets.store.layout import (
    FORMAT_VERSION,
    MANIFEST,
    IndexFormatError,
    collection_differences,
    dataset_entry,
    positions_digest,
    prompts_digest,
)
from neuronwidgets.store.reading import read_json_object

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.model.session import Session


def run_manifest(session: Session, samples: Sequence[Sample], layers: list[int], positions: list[int], *, text: str,
                 top_k: int, map_k: int | None, token_k: int | None, random_k: int, map_bits: int, max_text_tokens: int,
                 batch_size: int, seed: int, n_patches: int | None = None) -> dict:
    """What identifies a collection: the manifest `collect` writes, but for its progress and random samples.

    grid: the fixed grid [rows, cols], or None where it varies per sample (the samples table then holds
    each sample's grid_rows and grid_cols); n_patches: the image tokens kept per sample."""
    grid = session.grid
    if grid is None and n_patches is None:
        from neuronwidgets.collect.patches import patch_width

        n_patches = patch_width(session, samples)
    return {
        "format_version": FORMAT_VERSION,
        "model": session.name,
        "site": session.site,
        "layers": layers,
        "n_neurons": session.n_neurons,
        "grid": None if grid is None else [grid[0], grid[1]],
        "n_patches": grid[0] * grid[1] if grid is not None else int(n_patches),
        **({} if grid is not None else {"crop": bool(session.adapter.crop)}),  # the grid covers the whole image, or its centre square
        "text": text,
        "top_k": top_k,
        "map_k": top_k if map_k is None else min(map_k, top_k),
        "token_k": token_k or top_k,
        "random_k": random_k,
        "map_bits": map_bits,
        "max_text_tokens": max_text_tokens,
        "batch_size": batch_size,
        "seed": seed,
        "hist_edges": HIST_EDGES.tolist(),
        "dataset": dataset_entry(getattr(samples, "fingerprint", "samples"), len(samples)),
        "positions": positions_digest(positions),
        "n_positions": len(positions),
        "prompts": prompts_digest(samples),
    }


def check_folder_for(path: Path, manifest: dict, overwrite: bool) -> dict | None:
    """Before writing the collection `manifest` to `path`: the folder's manifest when it holds this collection
    (finished: reused; unfinished: resumed), None for a new or empty folder. Another collection, or files that
    are not an index, are refused unless overwrite."""
    finish_interrupted_write(path)  # a checkpoint whose write was killed: finish or drop it first
    file = path / MANIFEST
    if not file.exists():
        if holds_other_files(path) and not overwrite:
            raise IndexFormatError(f"{str(path)!r} holds files but no NeuronIndex (no {MANIFEST}): choose a new or empty "
                                   f"folder, or {OVERWRITE_ADVICE} to write an index into it")
        return None
    found = read_json_object(file)
    diff = collection_differences(found, manifest)
    if not diff and (found.get("complete") or isinstance(found.get("next_batch"), int)):
        return found
    if not overwrite:
        if found.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{str(path)!r} holds an index in format version {found.get('format_version')!r}; this "
                                   f"neuronwidgets writes version {FORMAT_VERSION}: {OVERWRITE_ADVICE} to collect it again, "
                                   "or choose another path")
        if diff:
            raise IndexFormatError(f"{str(path)!r} holds a different collection (differs in: {', '.join(diff)}); "
                                   f"choose another path, or {OVERWRITE_ADVICE} to replace it")
        raise IndexFormatError(f"{str(file)!r} describes an unfinished collection but not where it stopped (no next_batch): "
                               f"the checkpoint is damaged; {OVERWRITE_ADVICE} to start again")
    return None  # (the old index's explanations are set aside when the new one moves in: see finish_interrupted_write)


OVERWRITE_ADVICE = "pass overwrite=True (--overwrite on the command line)"
