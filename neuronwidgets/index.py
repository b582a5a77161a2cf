"""NeuronIndex: the on-disk result of a collection, loaded lazily, queried per neuron, merged exactly.

A folder holds:
  manifest.json            model, site, layers, text source, dataset fingerprint, format version
  samples.parquet          one row per sample: its id and its text tokens
  stats.parquet            per neuron and modality: count, sum, sum of squares, max
  layers/layer_NNN.safetensors
                           histograms, top-k samples (value, sample; quantised patch and
                           text maps for the best map_k, code histograms for the rest),
                           top token exemplars per modality, random records
No pickle anywhere: a folder received from someone else is safe to open.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from neuronwidgets.checks import whole_number
from neuronwidgets.histogram import HIST_EDGES
from neuronwidgets.records import ActivationRecord
from neuronwidgets.reduce import MODALITIES, LayerState, code_histogram, codes_from_histogram, dequantize, map_codes, store_codes

FORMAT_VERSION = 4  # 4: histogram edges at 2^e and 1.5 * 2^e; maps for the best map_k top samples only
MANIFEST = "manifest.json"


class IndexFormatError(ValueError):
    """A NeuronIndex folder is missing a file, is corrupt, or does not match what was expected."""


# --- the random sample set: a bottom-k hash sketch, identical however the data is split ----------
def random_key(seed: int, sample: int) -> int:
    digest = hashlib.sha1(f"{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class RandomSet:
    """The `k` samples with the smallest hash: a fixed random subset that merges exactly."""

    def __init__(self, k: int, seed: int, entries: Sequence[tuple[int, int, int]] = ()):
        self.k, self.seed = k, seed
        self.entries = [tuple(e) for e in entries]  # (hash, sample, slot)

    def offer(self, sample: int) -> int | None:
        """Add `sample` if it belongs in the set; return the slot its record goes to."""
        if self.k == 0:
            return None
        h = random_key(self.seed, sample)
        if len(self.entries) < self.k:
            slot = len(self.entries)
        else:
            worst = max(self.entries)
            if h >= worst[0]:
                return None
            self.entries.remove(worst)
            slot = worst[2]
        self.entries.append((h, sample, slot))
        return slot

    def canonical(self) -> list[tuple[int, int, int]]:
        return sorted(self.entries)


# --- saving and loading the state ---------------------------------------------------------
def _layer_file(path: Path, layer: int) -> Path:
    return path / "layers" / f"layer_{layer:03d}.safetensors"


def _smallest_uint(limit: int):
    """The smallest unsigned dtype that holds 0..limit."""
    return next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if limit <= np.iinfo(t).max)


def state_to_arrays(state: LayerState, random_slots: list[int], map_k: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(arrays for the layer file, per-neuron stats columns), compact dtypes, random in canonical order.

    Maps are written for the best `map_k` top samples (default: all); the others keep only the
    histogram of their map codes, which is all the paper rule reads: ~45 bytes instead of ~320.
    """
    map_k = state.top_k if map_k is None else min(int(map_k), state.top_k)
    levels = (1 << state.bits) - 1
    top = state.canonical_top()
    for mod, width in (("image", state.P), ("text", state.Tm)):
        top[f"top_{mod}_hist"] = code_histogram(state.unstore(top[f"top_{mod}_codes"][:, map_k:], width), levels)
        top[f"top_{mod}_codes"] = top[f"top_{mod}_codes"][:, :map_k]
    a = {k: v.detach().cpu().numpy() for k, v in {**state.t, **top}.items()}
    out: dict[str, np.ndarray] = {}
    stats: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        hist = a[f"{m}_hist"]  # int32 on disk unless a bin outgrows it (billions of tokens)
        out[f"hist_{m}"] = hist.astype(np.int32) if hist.max(initial=0) <= np.iinfo(np.int32).max else hist
        out[f"tok_{m}_value"] = a[f"tok_{m}_value"]
        out[f"tok_{m}_sample"] = a[f"tok_{m}_sample"].astype(np.int32)
        out[f"tok_{m}_pos"] = a[f"tok_{m}_pos"].astype(np.int16)
        stats[f"{m}_count"] = np.full(state.n, int(a[f"{m}_count"]), np.int64)
        stats[f"{m}_sum"] = a[f"{m}_sum"]
        stats[f"{m}_sumsq"] = a[f"{m}_sumsq"]
        stats[f"{m}_max"] = a[f"{m}_max"]
    out["top_value"] = a["top_value"]
    out["top_sample"] = a["top_sample"].astype(np.int32)
    out["top_image_hist"] = a["top_image_hist"].astype(_smallest_uint(state.P))
    out["top_text_hist"] = a["top_text_hist"].astype(_smallest_uint(state.Tm))
    slots = np.asarray(random_slots, np.int64)
    out["random_value"] = a["random_value"][slots]
    for k in ("top_image_codes", "top_text_codes"):
        out[k] = a[k]  # the state keeps maps as the files do (4-bit codes packed two to a byte)
    out["random_image_codes"] = a["random_image_codes"][slots]
    out["random_text_codes"] = a["random_text_codes"][slots]
    # safetensors writes an array's memory as it lies: a strided view (a slice) would be scrambled
    return {k: np.ascontiguousarray(v) for k, v in out.items()}, stats


def top_code_histograms(arrays: dict[str, np.ndarray], manifest: dict, modality: str) -> np.ndarray:
    """[neurons, top_k, levels]: every top sample's histogram of its map codes 1..levels."""
    bits = manifest["map_bits"]
    width = manifest["n_patches"] if modality == "image" else manifest["max_text_tokens"]
    codes = map_codes(arrays[f"top_{modality}_codes"], width, bits)
    kept = code_histogram(torch.from_numpy(np.ascontiguousarray(codes)), (1 << bits) - 1).to(torch.int32).numpy()
    return np.concatenate([kept, arrays[f"top_{modality}_hist"].astype(np.int32)], axis=1)


def arrays_to_state(arrays: dict[str, np.ndarray], stats: pd.DataFrame, m: dict, device="cpu") -> LayerState:
    """Rebuild a LayerState (for resuming and merging) from a saved layer."""
    P, Tm, bits = m["n_patches"], m["max_text_tokens"], m["map_bits"]
    R = m["random_k"]
    n_random = arrays["random_value"].shape[0]

    t = {}
    for mod in MODALITIES:
        t[f"{mod}_count"] = np.asarray(int(stats[f"{mod}_count"].iloc[0]) if len(stats) else 0, np.int64)
        t[f"{mod}_sum"] = stats[f"{mod}_sum"].to_numpy(np.float64)
        t[f"{mod}_sumsq"] = stats[f"{mod}_sumsq"].to_numpy(np.float64)
        t[f"{mod}_max"] = stats[f"{mod}_max"].to_numpy(np.float32)
        t[f"{mod}_hist"] = arrays[f"hist_{mod}"].astype(np.int64)
        t[f"tok_{mod}_value"] = arrays[f"tok_{mod}_value"]
        t[f"tok_{mod}_sample"] = arrays[f"tok_{mod}_sample"].astype(np.int64)
        t[f"tok_{mod}_pos"] = arrays[f"tok_{mod}_pos"].astype(np.int64)
    t["top_value"] = arrays["top_value"]
    t["top_sample"] = arrays["top_sample"].astype(np.int64)
    # Samples past map_k kept only their code histograms; a stand-in map with the same histogram
    # is enough, since such a sample can only fall further (it is never shown, only counted).
    for mod, width in (("image", P), ("text", Tm)):
        stand_in = codes_from_histogram(torch.from_numpy(arrays[f"top_{mod}_hist"].astype(np.int64)), width).numpy()
        t[f"top_{mod}_codes"] = np.concatenate([arrays[f"top_{mod}_codes"], store_codes(stand_in, bits)], axis=1)  # the state keeps maps as files do
    n = t["top_value"].shape[0]
    rv = np.zeros((R, n), np.float32)
    ri = np.zeros((R, n) + arrays["random_image_codes"].shape[2:], np.uint8)
    rt = np.zeros((R, n) + arrays["random_text_codes"].shape[2:], np.uint8)
    rv[:n_random], ri[:n_random], rt[:n_random] = arrays["random_value"], arrays["random_image_codes"], arrays["random_text_codes"]
    t["random_value"], t["random_image_codes"], t["random_text_codes"] = rv, ri, rt
    return LayerState.from_numpy(t, n_patches=P, max_text=Tm, top_k=m["top_k"], token_k=m["token_k"], random_k=R, bits=bits, device=device)


def write_index(path: Path, manifest: dict, layers: dict[int, LayerState], samples: pd.DataFrame, random: RandomSet) -> None:
    """Write a whole index folder: into a temporary folder first, then moved in place, the manifest last.

    A kill at any point leaves the old index, the new one, or a move to finish (`finish_interrupted_write`).
    """
    path = Path(path).expanduser()
    finish_interrupted_write(path)
    tmp = _writing(path)
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
        save_file(arrays, str(_layer_file(tmp, layer)), metadata={"neuronwidgets": note})
        stats_frames.append(pd.DataFrame({"layer": layer, "neuron": np.arange(state.n), **stats}))
    pd.concat(stats_frames, ignore_index=True).to_parquet(tmp / "stats.parquet", index=False)
    samples.sort_values("sample").reset_index(drop=True).to_parquet(tmp / "samples.parquet", index=False)
    (tmp / (MANIFEST + ".part")).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (tmp / (MANIFEST + ".part")).replace(tmp / MANIFEST)  # from here on the temporary folder is a whole index
    finish_interrupted_write(path)


EXPLANATIONS = "explanations.parquet"


#: What identifies a collection: an index folder holding the same values holds the same index.
COLLECTION_KEYS = ("format_version", "model", "site", "layers", "n_neurons", "grid", "text", "top_k", "token_k", "random_k", "map_k",
                   "map_bits", "max_text_tokens", "batch_size", "seed", "dataset", "positions", "hist_edges", "prompts")
#: Keys that folders written by earlier versions may lack (a merge left out positions; prompts came later): taken as matching.
LENIENT_KEYS = ("prompts", "positions")


def positions_digest(positions: Sequence[int]) -> str:
    """The manifest's `positions`: which dataset positions a collection covers, in its order."""
    return hashlib.sha1(json.dumps([int(p) for p in positions]).encode()).hexdigest()


def collection_differences(found: dict, new: dict, keys: Sequence[str] = COLLECTION_KEYS) -> list[str]:
    """The identifying keys in which two manifests differ (one a folder's, `found`)."""
    return [k for k in keys if found.get(k) != new.get(k) and not (k in LENIENT_KEYS and k not in found)]


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


def holds_other_files(path: Path) -> bool:
    """Whether a folder without a manifest holds anything an index may not replace (a torchrun job's shards/ is its own)."""
    return Path(path).is_dir() and any(p.name != "shards" for p in Path(path).iterdir())


def _writing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()  # '.' and '..' have no name of their own
    return path.with_name(path.name + ".writing")


def finish_interrupted_write(path: Path) -> None:
    """Bring `path` to one whole index after a write was killed: finish moving a complete new one in, or drop a partial one.

    The new index's files are moved over the old ones' (files of other kinds, such as
    explanations.parquet, stay), the manifest last: until it moves, `path`'s manifest is the
    old one and the rest may be new, so the move is finished before anything reads `path`.
    """
    path = Path(path).expanduser()
    tmp = _writing(path)
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


def read_manifest(path: Path) -> dict:
    path = Path(path).expanduser()
    pending = _writing(path) / MANIFEST
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
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{str(file)!r} has format version {version!r}; this neuronwidgets reads version {FORMAT_VERSION}. "
            "Collect the index again with this version."
        )
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise IndexFormatError(f"{str(file)!r} is corrupt: it lacks {', '.join(missing)}")
    return manifest


#: What every manifest holds (the readers rely on these).
MANIFEST_KEYS = ("model", "site", "layers", "n_neurons", "grid", "n_patches", "text", "top_k", "token_k", "random_k", "map_k",
                 "map_bits", "max_text_tokens", "dataset", "random_samples", "n_samples")


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
    file = _layer_file(Path(path), layer)
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


def _checked_table(file: Path, table: pd.DataFrame, columns: Sequence[str], rows: int) -> pd.DataFrame:
    """`table` if it has `columns` and `rows` rows, as the manifest says; else an IndexFormatError naming the file."""
    missing = [c for c in columns if c not in table.columns]
    if missing or len(table) != rows:
        what = f"it lacks the columns {', '.join(missing)}" if missing else f"it has {len(table)} rows, the manifest means {rows}"
        raise IndexFormatError(f"{str(file)!r} does not fit its manifest: {what} (a file of another index?)")
    return table


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")


def neurons_of(obj) -> tuple[str | None, str | None]:
    """(model, site) of a NeuronIndex, a Trace or a Session: whose neurons it holds (None where unknown)."""
    manifest = getattr(obj, "manifest", None)
    if isinstance(manifest, dict):
        return manifest.get("model"), manifest.get("site")
    return getattr(obj, "model_name", None) or getattr(obj, "name", None), getattr(obj, "site", None)


def check_same_neurons(a, b, what: str) -> None:
    """Refuse to put neurons of different sites side by side (layer 1 neuron 42 is another neuron there); warn for model names.

    a, b: NeuronIndexes, Traces or Sessions; `what` names them in the error ("the index and the trace").
    """
    (model_a, site_a), (model_b, site_b) = neurons_of(a), neurons_of(b)
    if site_a and site_b and site_a != site_b:
        raise ValueError(f"{what} record different neurons: site {site_a!r} against site {site_b!r}; "
                         "use a trace, session and indexes of one site (Session(..., site=...), collect with that session)")
    if model_a and model_b and model_a != model_b:  # a name, not the weights: one model may go by a hub id and a path
        warnings.warn(f"{what} name different models ({model_a!r} and {model_b!r}): if they are not the same weights, "
                      "layer and neuron numbers mean different neurons", stacklevel=3)


# --- the index ------------------------------------------------------------------------
class NeuronIndex:
    """What a collection found, per neuron: statistics, top samples with their maps, exemplars."""

    def __init__(self, path: Path | None, manifest: dict, samples: pd.DataFrame, stats: pd.DataFrame,
                 arrays: dict[int, dict[str, np.ndarray]] | None = None, dataset=None):
        self.path = Path(path).expanduser() if path is not None else None
        self.manifest = manifest
        self.samples = samples
        self._stats = stats
        self._arrays: dict[int, dict[str, np.ndarray]] = dict(arrays or {})
        self._dataset = None
        if dataset is not None:
            self.attach(dataset)  # checked by fingerprint, as attach() does

    # --- loading ---------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, expect_model: str | None = None, expect_site: str | None = None, dataset=None) -> "NeuronIndex":
        """Open an index folder, checking its files; layer arrays are read when first needed."""
        path = Path(path).expanduser()
        manifest = read_manifest(path)
        if not manifest.get("complete", False):
            raise IndexFormatError(
                f"{str(path / MANIFEST)!r} describes an unfinished collection "
                f"({manifest.get('n_samples', 0)} samples so far); run the same collect call again to resume it"
            )
        if expect_model is not None and manifest.get("model") != expect_model:
            raise IndexFormatError(f"{str(path / MANIFEST)!r} was collected from model {manifest.get('model')!r}, not {expect_model!r}")
        if expect_site is not None and manifest.get("site") != expect_site:
            raise IndexFormatError(f"{str(path / MANIFEST)!r} records neuron site {manifest.get('site')!r}, not {expect_site!r}")
        samples = _checked_table(path / "samples.parquet", read_table(path / "samples.parquet"), ("sample", "sample_id"), manifest["n_samples"])
        stat_columns = ("layer", "neuron", *(f"{m}_{s}" for m in MODALITIES for s in ("count", "sum", "sumsq", "max")))
        stats = _checked_table(path / "stats.parquet", read_table(path / "stats.parquet"), stat_columns,
                               len(manifest["layers"]) * manifest["n_neurons"])
        for layer in manifest["layers"]:
            if not _layer_file(path, layer).exists():
                raise IndexFormatError(f"{str(_layer_file(path, layer))!r} is missing from the index folder")
        return cls(path, manifest, samples, stats, dataset=dataset)

    def _layer(self, layer: int) -> dict[str, np.ndarray]:
        self._check_layer(layer)
        if layer not in self._arrays:
            self._arrays[layer] = read_layer(self.path, layer, self.manifest)
        return self._arrays[layer]

    def top_code_histograms(self, layer: int, modality: str = "image") -> np.ndarray:
        """[neurons, top_k, levels]: each top sample's count of patches (or text tokens) per map code 1..levels.

        The categories read these, not the maps, so they cover all top_k samples whether or
        not their maps were kept. Computed on each call (int32), not cached.
        """
        _check_modality(modality)
        return top_code_histograms(self._layer(layer), self.manifest, modality)

    # --- facts -----------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def n_neurons(self) -> int:
        return int(self.manifest["n_neurons"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def site(self) -> str:
        return self.manifest["site"]

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def top_k(self) -> int:
        return int(self.manifest["top_k"])

    @property
    def n_samples(self) -> int:
        return int(self.manifest["n_samples"])

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        where = str(self.path) if self.path else "in memory"
        return (
            f"<NeuronIndex {where}: model {self.model!r}, site {self.site!r}, {self.n_samples} samples "
            f"(text={self.manifest['text']!r}), layers {self.layers[0]}-{self.layers[-1]} x {self.n_neurons} neurons, top_k={self.top_k}>"
        )

    def _check_layer(self, layer: int) -> int:
        layer = whole_number(layer, "layer")
        if layer not in self.manifest["layers"]:
            raise IndexError(f"layer {layer} is not in this index; its layers are {self.layers}")
        return layer

    def _check_neuron(self, neuron: int) -> int:
        neuron = whole_number(neuron, "neuron")
        if not 0 <= neuron < self.n_neurons:
            raise IndexError(f"neuron {neuron} is out of range: this index has neurons 0..{self.n_neurons - 1} per layer")
        return neuron

    # --- statistics ----------------------------------------------------------------
    def stats(self, layer: int | None = None) -> pd.DataFrame:
        """Per neuron and modality: count, mean, std, max (and the overall max)."""
        df = self._stats if layer is None else self._stats[self._stats.layer == self._check_layer(layer)]
        out = df[["layer", "neuron"]].copy()
        for m in MODALITIES:
            n = df[f"{m}_count"].to_numpy(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = df[f"{m}_sum"].to_numpy() / n
                var = np.maximum(df[f"{m}_sumsq"].to_numpy() / n - mean**2, 0.0)
            out[f"{m}_count"] = df[f"{m}_count"].to_numpy()
            out[f"{m}_mean"] = mean
            out[f"{m}_std"] = np.sqrt(var)
            out[f"{m}_max"] = df[f"{m}_max"].to_numpy()
        out["max"] = np.fmax(out["image_max"].to_numpy(), out["text_max"].to_numpy())
        return out.reset_index(drop=True)

    def neuron_max(self, layer: int, neuron: int) -> float:
        """The neuron's largest activation over the dataset (patches and text tokens)."""
        self._check_layer(layer)
        row = self._stats[(self._stats.layer == layer) & (self._stats.neuron == self._check_neuron(neuron))].iloc[0]
        return float(np.fmax(row["image_max"], row["text_max"]))

    def histogram(self, layer: int, neuron: int, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) over fixed bins; the first and last bins are open-ended."""
        _check_modality(modality)
        edges = np.asarray(self.manifest.get("hist_edges", HIST_EDGES), np.float64)
        return edges, self._layer(layer)[f"hist_{modality}"][self._check_neuron(neuron)].astype(np.int64)

    # --- records ---------------------------------------------------------------------
    def _sample_rows(self) -> dict[int, tuple[str, list[str]]]:
        """sample -> (sample_id, text tokens), built once: records() asks for it per record."""
        cached = getattr(self, "_rows_cache", None)
        if cached is None or cached[0] is not self.samples:
            rows = {int(s): (str(i), list(t)) for s, i, t in
                    zip(self.samples["sample"], self.samples["sample_id"], self.samples["text_tokens"])}
            cached = self._rows_cache = (self.samples, rows)
        return cached[1]

    def _text_of(self, sample: int) -> list[str]:
        row = self._sample_rows().get(int(sample))
        return list(row[1]) if row else []

    def records(self, layer: int, neuron: int, kind: str = "top") -> list[ActivationRecord]:
        """The neuron's top-activating samples (best first) or its random samples, as records.

        Top records are the best `map_k` of the top_k samples (those whose maps are kept);
        `top_samples` lists all top_k with their values.
        """
        arrays = self._layer(layer)
        neuron = self._check_neuron(neuron)
        P, Tm, bits = self.manifest["n_patches"], self.manifest["max_text_tokens"], self.manifest["map_bits"]
        rows, cols = self.grid

        def codes(name, width, *idx):
            return map_codes(arrays[name][idx], width, bits)

        out = []
        if kind == "top":
            kept = arrays["top_image_codes"].shape[1]  # the best map_k samples have maps
            values, samples = arrays["top_value"][neuron, :kept], arrays["top_sample"][neuron, :kept]
            entries = [(i, int(s), float(v)) for i, (s, v) in enumerate(zip(samples, values)) if s >= 0]
            get = lambda i, name, width: codes(name, width, neuron, i)  # noqa: E731
            img_name, txt_name = "top_image_codes", "top_text_codes"
        elif kind == "random":
            samples = self.manifest["random_samples"]
            values = arrays["random_value"][:, neuron]
            entries = [(i, int(s), float(values[i])) for i, s in enumerate(samples)]
            get = lambda i, name, width: codes(name, width, i, neuron)  # noqa: E731
            img_name, txt_name = "random_image_codes", "random_text_codes"
        else:
            raise ValueError(f"kind must be 'top' or 'random', got {kind!r}")
        for i, sample, value in entries:
            scale = max(value, 0.0)
            tokens = self._text_of(sample)
            text = dequantize(get(i, txt_name, Tm), scale, bits)[: len(tokens)]
            out.append(
                ActivationRecord(
                    sample=sample,
                    sample_id=self.sample_id(sample),
                    activation=value,
                    patch_map=dequantize(get(i, img_name, P), scale, bits).reshape(rows, cols),
                    text_tokens=tokens[: len(text)],
                    text_activations=text,
                    kind=kind,
                )
            )
        return out

    def sample_id(self, sample: int) -> str:
        row = self._sample_rows().get(int(sample))
        return row[0] if row else str(sample)

    def top_samples(self, layer: int, neuron: int) -> pd.DataFrame:
        """All top_k samples of the neuron, best first: rank, sample, sample_id, activation, has_map."""
        arrays = self._layer(layer)
        neuron = self._check_neuron(neuron)
        samples = arrays["top_sample"][neuron].astype(np.int64)
        keep = samples >= 0
        rank = np.flatnonzero(keep)
        return pd.DataFrame({
            "rank": rank,
            "sample": samples[keep],
            "sample_id": [self.sample_id(int(s)) for s in samples[keep]],
            "activation": arrays["top_value"][neuron][keep],
            "has_map": rank < arrays["top_image_codes"].shape[1],
        })

    def exemplars(self, layer: int, neuron: int, modality: str | None = None, k: int | None = None) -> pd.DataFrame:
        """Top tokens of the neuron: sample, sample_id, position, modality, row, col, token, activation (best first).

        modality: 'image' or 'text' (default: both); k: at most this many (default: all kept).
        """
        if modality is not None:
            _check_modality(modality)
        if k is not None and whole_number(k, "k") < 0:
            raise ValueError(f"k is how many exemplars to return, so 0 or more (None for all); got {k}")
        arrays = self._layer(layer)
        neuron = self._check_neuron(neuron)
        cols_ = self.grid[1]
        frames = []
        for m in MODALITIES if modality is None else (modality,):
            v = arrays[f"tok_{m}_value"][neuron]
            s = arrays[f"tok_{m}_sample"][neuron].astype(np.int64)
            p = arrays[f"tok_{m}_pos"][neuron].astype(np.int64)
            keep = s >= 0
            v, s, p = v[keep], s[keep], p[keep]
            if m == "image":
                row, col, tok = p // cols_, p % cols_, [""] * len(p)
            else:
                row = col = np.full(len(p), -1)
                tok = [(self._text_of(int(si)) + [""] * (int(pi) + 1))[int(pi)] for si, pi in zip(s, p)]
            frames.append(pd.DataFrame({"sample": s, "position": p, "modality": m, "row": row, "col": col, "token": tok, "activation": v}))
        df = pd.concat(frames, ignore_index=True)
        df.insert(1, "sample_id", [self.sample_id(int(x)) for x in df["sample"]])
        df = df.sort_values(["activation", "sample", "position"], ascending=[False, True, True], kind="stable").reset_index(drop=True)
        return df if k is None else df.head(int(k))

    # --- dataset ---------------------------------------------------------------------
    @property
    def dataset(self):
        """The samples this index was collected over (attached, or rebuilt from the manifest's spec)."""
        if self._dataset is None:
            from neuronwidgets.datasets.spec import from_spec

            spec = self.manifest.get("dataset", {}).get("spec")
            if spec:
                self._dataset = from_spec(spec)
        return self._dataset

    def attach(self, dataset) -> "NeuronIndex":
        """Attach the dataset the index was collected over (checked by fingerprint)."""
        want = self.manifest.get("dataset", {}).get("fingerprint")
        got = getattr(dataset, "fingerprint", None)
        if want and got and want != got:
            raise ValueError(f"dataset fingerprint {got!r} does not match the index's {want!r}")
        self._dataset = dataset
        return self

    def sample(self, i: int):
        if self.dataset is None:
            raise ValueError("this index has no dataset attached; call index.attach(dataset) with the samples it was collected over")
        return self.dataset[int(i)]

    # --- categories (see categorize.py) -------------------------------------------------
    def categories(self, rule: str = "paper", **params) -> pd.DataFrame:
        from neuronwidgets.categorize import categorize

        return categorize(self, rule=rule, **params)

    def category_summary(self, rule: str = "paper", **params) -> pd.DataFrame:
        from neuronwidgets.categorize import summary

        return summary(self.categories(rule=rule, **params))

    def category_chart(self, rule: str = "paper", **params):
        from neuronwidgets.categorize import category_chart

        return category_chart(self.categories(rule=rule, **params))

    def category_figure(self, rule: str = "paper", **params):
        from neuronwidgets.categorize import category_figure

        return category_figure(self.categories(rule=rule, **params))

    # --- explanations written by explain_all ------------------------------------------------
    def explanations(self) -> pd.DataFrame | None:
        if self.path is None or not (self.path / EXPLANATIONS).exists():
            return None
        return read_table(self.path / EXPLANATIONS)

    # --- merging -----------------------------------------------------------------------------
    @classmethod
    def merge(cls, indexes: Sequence["NeuronIndex"], path: str | Path, overwrite: bool = False) -> "NeuronIndex":
        """Merge indexes of disjoint parts of one dataset into exactly the index of one pass (another index at `path`: overwrite=True)."""
        from neuronwidgets.merge import merge_indexes

        return merge_indexes(indexes, path, overwrite=overwrite)

    def to_state(self, device="cpu") -> dict[int, LayerState]:
        out = {}
        for layer in self.layers:
            stats = self._stats[self._stats.layer == layer].sort_values("neuron")
            out[layer] = arrays_to_state(self._layer(layer), stats, self.manifest, device)
        return out
