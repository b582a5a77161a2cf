"""Collections whose state would not fit in memory: the layers in groups, one pass over the data per group.

A layer's state (its neurons' top samples with their maps, token exemplars, random records,
histograms) is some 240 MB at LLaVA-1.5-7B's shape (11008 neurons, 576 patches, top_k=50), 7.6 GB
for all 32 layers: more than a CPU machine can spare beside the model. Every reduction is per
neuron, so the layers need not be collected together: `collect` splits them into groups whose
state fits `max_state_bytes` (on a CPU 1.25 GiB by default) and runs the data once per group, each
pass an ordinary collection of its layers (checkpointed and resumed as one) written beside the
index (`<path>.passes/`). When the last pass is done its layer files move into the index, which
is then the one a single pass writes. Text generated in the first pass is replayed in the others
(greedy answers are the same, and generating them again would cost a forward pass per token), and
each pass's forward passes stop after its last layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neuronwidgets.reduce.state import LayerState
from neuronwidgets.reduce.topk import PENDING_SHARE, PENDING_TOP_BYTES
from neuronwidgets.store.folder import finish_interrupted_write
from neuronwidgets.store.index import NeuronIndex
from neuronwidgets.store.layout import MANIFEST, writing_folder
from neuronwidgets.store.reading import read_json_object, read_table

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.model.encoding import Encoded
    from neuronwidgets.model.session import Session

#: The most bytes the per-layer states of one pass take on a CPU, unless `collect(max_state_bytes=...)` says otherwise:
#: at LLaVA-1.5-7B's shape 4 layers, and a pass's peak memory, batches of 16 and the forward pass included, about 4 GB
#: (measured: 4.15 GiB with 5 layers a pass, 2.7 GiB with one).
CPU_STATE_BUDGET = 5 << 28
#: Bytes per candidate entry waiting in a token top-k buffer: neuron (int64), value (float32), key (int64).
_PENDING_TOKEN_BYTES = 20


def state_bytes(n_neurons: int, n_patches: int, max_text: int, top_k: int, token_k: int, random_k: int, bits: int) -> int:
    """The bytes one layer's collection state takes: its arrays (counted from a one-neuron state) and its candidate buffers."""
    probe = LayerState(1, n_patches, max_text, top_k, token_k, random_k, bits, "cpu")
    per_neuron = sum(v.numel() * v.element_size() for name, v in probe.t.items() if not name.endswith("_count"))
    pending = int(PENDING_TOP_BYTES) + int(2 * n_neurons * token_k * PENDING_SHARE * _PENDING_TOKEN_BYTES)
    return n_neurons * per_neuron + pending


def layer_groups(layers: Sequence[int], per_layer: int, max_state_bytes: int | None, device: str | torch.device) -> list[list[int]]:
    """`layers` in consecutive groups whose states fit `max_state_bytes` (None: on a CPU `CPU_STATE_BUDGET`, else no limit)."""
    layers = list(layers)
    if max_state_bytes is None:
        if torch.device(device).type != "cpu":
            return [layers]
        max_state_bytes = CPU_STATE_BUDGET
    if max_state_bytes <= 0:
        raise ValueError(f"max_state_bytes must be positive (or None for the default), got {max_state_bytes!r}")
    size = max(1, int(max_state_bytes // max(per_layer, 1)))
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def passes_folder(path: Path) -> Path:
    """Where the passes of a collection into `path` keep their partial indexes until they are joined."""
    path = Path(path).expanduser().absolute()
    return path.with_name(path.name + ".passes")


class _LastLayerDone(Exception):
    """Raised from the hook of a pass's last layer: the rest of the forward pass is not needed."""


class ReplaySession:
    """A pass's view of the session: greedy answers remembered by (image, prompt) and replayed when a later pass
    asks again, and forward passes stopped after the last layer the pass records."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._answers: dict[tuple, list[int]] = {}

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def forward_record(self, batch: Sequence[Encoded], layers: Sequence[int], site: str | None = None,
                       on_activation: Callable[[int, torch.Tensor], None] | None = None
                       ) -> tuple[dict[int, torch.Tensor], list[int]]:
        """The session's forward_record, cut short after the last of `layers` when a callback takes them (nothing returned)."""
        if on_activation is None or not len(layers):
            return self._session.forward_record(batch, layers, site=site, on_activation=on_activation)
        last = max(layers)

        def hand_over(layer: int, acts: torch.Tensor) -> None:
            on_activation(layer, acts)
            if layer == last:
                raise _LastLayerDone

        try:
            return self._session.forward_record(batch, layers, site=site, on_activation=hand_over)
        except _LastLayerDone:
            return {}, [len(e.input_ids) for e in batch]

    def generate_ids(self, images: Sequence, prompts: Sequence[str], max_new_tokens: int = 48) -> list[list[int]]:
        """The session's answers, replayed where this batch was answered before (a whole batch: the same padding)."""
        keys = [(_image_key(im), str(p), int(max_new_tokens)) for im, p in zip(images, prompts)]
        if keys and all(k in self._answers for k in keys):
            return [list(self._answers[k]) for k in keys]
        answers = self._session.generate_ids(images, prompts, max_new_tokens=max_new_tokens)
        self._answers.update(zip(keys, (list(a) for a in answers)))
        return answers


def _image_key(image) -> tuple:
    """An image's identity by content (a sample may hand out a new image object each time)."""
    if hasattr(image, "tobytes"):
        size, mode = getattr(image, "size", None), getattr(image, "mode", None)
        return size, mode, hashlib.sha1(image.tobytes()).hexdigest()
    array = np.ascontiguousarray(np.asarray(image))
    return array.shape, str(array.dtype), hashlib.sha1(array.tobytes()).hexdigest()


def collect_in_passes(collect: Callable[..., NeuronIndex], session: Session, samples: Sequence[Sample], groups: list[list[int]],
                      manifest: dict, *, path: Path | None, overwrite: bool, **kwargs: Any) -> NeuronIndex:
    """Collect each group of layers in a pass of its own, then join them into the index of one pass (at `path`, or in memory).

    kwargs: the rest of `collect`'s arguments, the same for every pass.
    """
    replay = ReplaySession(session)
    if path is None:
        parts = [collect(replay, samples, layers=group, path=None, max_state_bytes=sys.maxsize, **kwargs) for group in groups]
        return _join_in_memory(parts, manifest, samples)
    staging = passes_folder(path)
    if overwrite and staging.exists():
        shutil.rmtree(staging)  # passes of the collection being replaced
    staging.mkdir(parents=True, exist_ok=True)
    parts = []
    for group in groups:
        part = staging / f"layers_{group[0]:03d}-{group[-1]:03d}"
        collect(replay, samples, layers=group, path=part, overwrite=overwrite, max_state_bytes=sys.maxsize, **kwargs)
        parts.append(part)
    _join_folders(path, parts, manifest)
    shutil.rmtree(staging)
    return NeuronIndex.load(path, dataset=samples)


def _final_manifest(manifest: dict, part: dict) -> dict:
    """The whole collection's manifest, with what a finished pass adds (its random samples, sample count, progress)."""
    added = {k: part[k] for k in ("random_samples", "n_samples", "complete", "next_batch")}
    return {**manifest, **added}


def _join_folders(path: Path, parts: list[Path], manifest: dict) -> None:
    """Move the passes' layer files into one index folder at `path`: written aside, then moved in, the manifest last."""
    path = Path(path).expanduser()
    finish_interrupted_write(path)
    tmp = writing_folder(path)
    (tmp / "layers").mkdir(parents=True)
    stats = []
    for part in parts:
        for file in sorted((part / "layers").iterdir()):
            _link_or_copy(file, tmp / "layers" / file.name)  # not moved: a kill here leaves the passes whole, to join again
        stats.append(read_table(part / "stats.parquet"))
    pd.concat(stats, ignore_index=True).sort_values(["layer", "neuron"], kind="stable").reset_index(drop=True) \
        .to_parquet(tmp / "stats.parquet", index=False)
    _link_or_copy(parts[0] / "samples.parquet", tmp / "samples.parquet")  # every pass ran the same samples
    final = _final_manifest(manifest, read_json_object(parts[0] / MANIFEST))
    (tmp / (MANIFEST + ".part")).write_text(json.dumps(final, indent=2, sort_keys=True))
    (tmp / (MANIFEST + ".part")).replace(tmp / MANIFEST)
    finish_interrupted_write(path)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows one (no bytes copied), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _join_in_memory(parts: list[NeuronIndex], manifest: dict, samples) -> NeuronIndex:
    arrays = {layer: part._arrays[layer] for part in parts for layer in part.layers}
    stats = pd.concat([part._stats for part in parts], ignore_index=True)
    return NeuronIndex(None, _final_manifest(manifest, parts[0].manifest), parts[0].samples, stats, arrays=arrays, dataset=samples)
