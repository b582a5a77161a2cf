"""Stream a dataset through the model into a NeuronIndex, checkpointing and resuming as it goes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from neuronwidgets.collect.config import TEXT_SOURCES, check_indices
from neuronwidgets.collect.hook import BatchReducer
from neuronwidgets.collect.manifest import check_folder_for, run_manifest
from neuronwidgets.collect.passes import collect_in_passes, layer_groups, state_bytes
from neuronwidgets.collect.patches import patch_width, sample_patches
from neuronwidgets.datasets.convert import as_samples
from neuronwidgets.model.encoding import Encoded, token_texts
from neuronwidgets.reduce.random_set import RandomSet, random_key
from neuronwidgets.reduce.state import LayerState
from neuronwidgets.store.codec import state_to_arrays
from neuronwidgets.store.folder import write_index
from neuronwidgets.store.index import NeuronIndex
from neuronwidgets.store.reading import read_table

if TYPE_CHECKING:
    from PIL import Image

    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.model.session import Session


def collect(session: Session, dataset: Iterable[Sample | tuple], *, layers: Sequence[int] | None = None, top_k: int = 50,
            token_k: int | None = None, random_k: int = 10, map_k: int | None = 30, batch_size: int = 16,
            path: str | Path | None = None, text: str = "generate", max_text_tokens: int = 64, map_bits: int = 4,
            checkpoint_every: int | None = None, indices: Sequence[int] | None = None, seed: int = 0, overwrite: bool = False,
            progress: bool = True, prefetch: bool | None = None, max_patches: int | None = None,
            max_state_bytes: int | None = None) -> NeuronIndex:
    """Record `layers` (default all) over `dataset` and return its NeuronIndex.

    text: which tokens count as text tokens, as in the paper: "generate" (the model's own
    greedy answer to the sample's prompt, fed back in one pass; the default), "caption" (the
    dataset's caption read after the prompt) or "prompt" (the prompt's own text tokens).
    map_k: how many of the top_k samples keep their patch and text maps (the best ones: what
    cards, explainers and scorers read; None keeps all). The rest keep their value and a
    histogram of their map codes, enough for the categories, at a seventh of the bytes.
    indices: the dataset positions to process (shards); sample numbers are dataset positions.
    checkpoint_every: with a `path`, write a resumable checkpoint every this many batches; by
    default once a minute of work, and never more often than keeps checkpoints under 5% of the time.
    prefetch: read and encode the next batch on a second thread while the model runs the current
    one (with text="generate", only read it). Default: when the model is not on a CPU, whose
    cores the model's own threads already use.
    max_patches: for a model whose grid varies per input (Qwen2-VL, LLaVA-NeXT, Idefics3, ...), the
    image tokens kept per sample (default: the most any image of the dataset has; see collect/patches.py).
    max_state_bytes: the most memory the layers' states may take at once (default: 1.25 GiB on a CPU, no
    limit on a GPU); more layers than fit are collected in groups, one pass over the data per group
    (see collect/passes.py), into the same index.
    """
    call = dict(locals())  # the arguments, for the passes over groups of layers
    if text not in TEXT_SOURCES:
        raise ValueError(f"text must be one of {TEXT_SOURCES}, got {text!r}")
    if map_bits not in (4, 8):
        raise ValueError(f"map_bits must be 4 or 8, got {map_bits!r}")
    if top_k < 1 or (token_k is not None and token_k < 1):
        raise ValueError(f"top_k and token_k must be at least 1, got top_k={top_k!r}, token_k={token_k!r}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be at least 1 batch (or None: about once a minute), got {checkpoint_every!r}")
    if map_k is not None and map_k < 0:
        raise ValueError(f"map_k must be >= 0 (or None for all top_k samples), got {map_k!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 sample, got {batch_size!r}")
    if random_k < 0:
        raise ValueError(f"random_k must be >= 0 (the random samples kept for scoring; 0 keeps none), got {random_k!r}")
    fewest_text_tokens = 1 if text == "generate" else 0  # generate needs room for one token at least
    if max_text_tokens < fewest_text_tokens:
        raise ValueError(f"max_text_tokens must be >= {fewest_text_tokens} with text={text!r}, got {max_text_tokens!r}")
    samples = as_samples(dataset)
    layers = session.check_layers(layers)
    positions = list(range(len(samples))) if indices is None else check_indices(indices, len(samples))
    if not positions:
        raise ValueError("indices is empty: nothing to collect" if indices is not None else "the dataset is empty: nothing to collect")
    n_patches = patch_width(session, samples, max_patches)
    manifest = run_manifest(session, samples, layers, positions, text=text, top_k=top_k, map_k=map_k, token_k=token_k,
                            random_k=random_k, map_bits=map_bits, max_text_tokens=max_text_tokens, batch_size=batch_size, seed=seed,
                            n_patches=n_patches)
    batches = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    device = session.device
    per_layer = state_bytes(session.n_neurons, n_patches, max_text_tokens, top_k, manifest["token_k"], random_k, map_bits)
    groups = layer_groups(layers, per_layer, max_state_bytes, device)
    if len(groups) > 1:
        target = Path(path).expanduser() if path is not None else None
        found = check_folder_for(target, manifest, overwrite) if target is not None else None
        if found is not None and found.get("complete"):
            return NeuronIndex.load(target, dataset=samples)
        rest = {k: v for k, v in call.items() if k not in ("session", "dataset", "layers", "path", "overwrite", "max_state_bytes")}
        return collect_in_passes(collect, session, samples, groups, manifest, path=target, overwrite=overwrite, **rest)
    state = {layer: LayerState(session.n_neurons, n_patches, max_text_tokens, top_k, manifest["token_k"], random_k, map_bits, device)
             for layer in layers}
    random = RandomSet(random_k, seed)
    sample_rows: list[dict] = []
    start = 0
    path = Path(path).expanduser() if path is not None else None
    if path is not None:
        found = check_folder_for(path, manifest, overwrite)
        if found is not None and found.get("complete"):
            return NeuronIndex.load(path, dataset=samples)
        if found is not None:
            old = NeuronIndex(path, found, read_table(path / "samples.parquet"), read_table(path / "stats.parquet"))
            state = old.to_state(device)
            # Saved random records are in canonical (hash) order, in slots 0, 1, ...
            random = RandomSet(random_k, seed, [(random_key(seed, s), s, i) for i, s in enumerate(found["random_samples"])])
            sample_rows = old.samples.to_dict("records")
            start = found["next_batch"]

    reducer = BatchReducer(state, batch_size)
    state = None  # the reducer holds the states (on a CPU, layers side by side in copies: the originals can go)
    clock = _CheckpointClock(checkpoint_every)
    bar = tqdm(total=len(positions), initial=sum(len(b) for b in batches[:start]), desc="collect", unit="img", disable=not progress)

    def prepare(batch: list[int]) -> PreparedBatch:
        return prepare_batch(session, samples, batch, text, max_text_tokens, n_patches)

    if prefetch is None:
        prefetch = torch.device(device).type != "cpu"
    prepared_batches = (ahead if prefetch else map)(prepare, batches[start:])
    for done, prepared in enumerate(prepared_batches, start + 1):
        sample_rows += run_batch(session, prepared, reducer, random, text, max_text_tokens, n_patches)
        bar.update(len(prepared.batch))
        if path is not None and done < len(batches) and clock.due(done):
            with clock.writing():
                write_index(path, {**manifest, "complete": False, "next_batch": done}, reducer.states(), pd.DataFrame(sample_rows), random)
    bar.close()
    state = reducer.states()
    final = {**manifest, "complete": True, "next_batch": len(batches)}
    samples_df = pd.DataFrame(sample_rows).sort_values("sample").reset_index(drop=True)
    if path is not None:
        write_index(path, final, state, samples_df, random)
        return NeuronIndex.load(path, dataset=samples)
    return in_memory_index(final, state, samples_df, random, dataset=samples)


def ahead(fn: Callable, items: Iterable) -> Iterator:
    """fn(item) for each item, each computed on a thread of its own while the caller works on the one before.

    Daemon threads: an error or an interrupt in the caller surfaces at once and never waits for
    (or hangs on) a read in flight. An error in fn surfaces when its item is reached.
    """
    def start(item):
        box: dict = {}

        def work():
            try:
                box["value"] = fn(item)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller, KeyboardInterrupt included
                box["error"] = err

        thread = threading.Thread(target=work, name="neuronwidgets-prefetch", daemon=True)
        thread.start()
        return thread, box

    items = iter(items)
    upcoming = next((start(item) for item in items), None)
    while upcoming is not None:
        thread, box = upcoming
        thread.join()
        if "error" in box:
            raise box["error"]
        upcoming = next((start(item) for item in items), None)
        yield box["value"]


class _CheckpointClock:
    """When to write a checkpoint: every `every` batches, or by default after a minute of work
    and at least 19 times as long as the last write took (checkpoints stay under 5% of the time)."""

    MIN_SECONDS = 60.0

    def __init__(self, every: int | None):
        self.every = every
        self.since = time.monotonic()
        self.write_seconds = 0.0

    def due(self, done_batches: int) -> bool:
        if self.every is not None:
            return done_batches % self.every == 0
        return time.monotonic() - self.since >= max(self.MIN_SECONDS, 19 * self.write_seconds)

    @contextlib.contextmanager
    def writing(self):
        start = time.monotonic()
        yield
        self.since = time.monotonic()
        self.write_seconds = self.since - start


@dataclass
class PreparedBatch:
    """A batch's inputs, made without the model (so on another thread): samples and images, and
    unless the text is generated, the encoded inputs, token positions and table rows."""

    batch: list[int]
    items: list[Sample]
    images: list[Image.Image]
    encoded: list[Encoded] | None = None
    positions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    rows: list[dict] = field(default_factory=list)
    image_valid: np.ndarray | None = None  # [B, P] where samples hold fewer image tokens than P


def prepare_batch(session: Session, samples: Sequence[Sample], batch: list[int], text: str, max_text_tokens: int,
                  n_patches: int | None = None) -> PreparedBatch:
    """Read a batch of dataset positions and, where the text needs no model, encode it."""
    items = [samples[i] for i in batch]
    prepared = PreparedBatch(batch, items, [s.get_image() for s in items])
    if text != "generate":
        if text == "caption":
            missing = [s.id for s in items if not s.caption]
            if missing:
                raise ValueError(f"text='caption' but samples {missing[:3]} have no caption; use text='generate' or 'prompt'")
            conts = session.tokenizer([" " + s.caption.strip() for s in items], add_special_tokens=False)["input_ids"]
        else:
            conts = [None] * len(items)
        _encode(session, prepared, conts, text, max_text_tokens, n_patches)
    return prepared


def _encode(session: Session, prepared: PreparedBatch, conts: list, text: str, max_text_tokens: int, n_patches: int | None = None) -> None:
    """Encode the batch with its continuations; fill in its token positions and table rows."""
    tok = session.tokenizer
    prepared.encoded = session.encode_batch(prepared.images, [s.prompt for s in prepared.items], conts)
    image_pos, text_lists, text_pos, text_valid = _positions(session, prepared.encoded, text, max_text_tokens)
    grids = None
    if not session.adapter.fixed_grid:  # each sample's own grid: its patches first, then the rest, then padding
        image_pos, prepared.image_valid, grids = _variable_patches(session, prepared.encoded, n_patches)
    prepared.positions = (image_pos, text_pos, text_valid)
    for i, (s_idx, enc, tp, item) in enumerate(zip(prepared.batch, prepared.encoded, text_lists, prepared.items)):
        ids = [enc.input_ids[p] for p in tp]
        row = {"sample": s_idx, "sample_id": item.id, "text_token_ids": ids,
               "text_tokens": token_texts(tok, ids), "text": tok.decode(ids, skip_special_tokens=True)}
        if grids is not None:
            row.update(grid_rows=grids[i][0], grid_cols=grids[i][1], n_image_tokens=int(prepared.image_valid[i].sum()))
        prepared.rows.append(row)


def _variable_patches(session: Session, encoded: list[Encoded], width: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Image positions [B, width] in stored order, their validity [B, width], each sample's grid."""
    image_pos = np.zeros((len(encoded), width), np.int64)
    valid = np.zeros((len(encoded), width), bool)
    grids = []
    for i, enc in enumerate(encoded):
        order, grid = sample_patches(session, enc, width)
        image_pos[i, : len(order)] = order
        valid[i, : len(order)] = True
        grids.append(grid)
    return image_pos, valid, grids


def run_batch(session: Session, prepared: PreparedBatch, reducer: BatchReducer, random: RandomSet, text: str,
              max_text_tokens: int, n_patches: int | None = None) -> list[dict]:
    """Run a prepared batch through the model (generating its text first if asked) and fold it in; its table rows."""
    if prepared.encoded is None:
        conts = session.generate_ids(prepared.images, [s.prompt for s in prepared.items], max_new_tokens=max_text_tokens)
        _encode(session, prepared, conts, text, max_text_tokens, n_patches)
    device = session.device
    slots = [(slot, j) for j, s_idx in enumerate(prepared.batch) if (slot := random.offer(s_idx)) is not None]
    sample_ids = torch.tensor(prepared.batch, dtype=torch.int64, device=device)
    valid = None if prepared.image_valid is None or prepared.image_valid.all() else torch.as_tensor(prepared.image_valid, device=device)
    reducer.begin(*(torch.as_tensor(x, device=device) for x in prepared.positions), sample_ids, slots, image_valid=valid)
    session.forward_record(prepared.encoded, reducer.layers, on_activation=reducer)
    return prepared.rows


def in_memory_index(manifest: dict, state: dict[int, LayerState], samples: pd.DataFrame, random: RandomSet,
                    dataset: Sequence[Sample] | None = None) -> NeuronIndex:
    """The NeuronIndex of a finished collection kept in memory (no `path`): the arrays a folder would hold."""
    canon = random.canonical()
    manifest = {**manifest, "random_samples": [int(s) for _, s, _ in canon], "n_samples": int(len(samples))}
    arrays, frames = {}, []
    for layer, st in sorted(state.items()):
        arrays[layer], stats = state_to_arrays(st, [slot for _, _, slot in canon], manifest.get("map_k"))
        frames.append(pd.DataFrame({"layer": layer, "neuron": np.arange(st.n), **stats}))
    return NeuronIndex(None, manifest, samples, pd.concat(frames, ignore_index=True), arrays=arrays, dataset=dataset)


def _positions(session, encoded, text: str, max_text: int):
    """Image positions [B, P]; text positions as lists, and padded to [B, max_text] with validity."""
    image_id = session.adapter.image_token_id
    special = set(session.tokenizer.all_special_ids)
    B = len(encoded)
    fixed = session.adapter.fixed_grid  # else the image positions come from _variable_patches
    P = session.grid[0] * session.grid[1] if fixed else 0
    image_pos = np.zeros((B, P), np.int64)
    text_pos = np.zeros((B, max_text), np.int64)
    valid = np.zeros((B, max_text), bool)
    kept = []
    for i, enc in enumerate(encoded):
        ids = np.asarray(enc.input_ids)
        img = np.flatnonzero(ids == image_id)
        if fixed and len(img) != P:
            raise ValueError(f"expected {P} image tokens, found {len(img)} (one image per prompt)")
        image_pos[i] = img[:P]
        if text == "prompt":
            tp = [p for p in range(enc.n_prompt) if ids[p] != image_id and int(ids[p]) not in special]
        else:
            tp = list(range(enc.n_prompt, len(ids)))
        tp = tp[:max_text]
        text_pos[i, : len(tp)] = tp
        valid[i, : len(tp)] = True
        kept.append(tp)
    return image_pos, kept, text_pos, valid
