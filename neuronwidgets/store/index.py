"""NeuronIndex: the on-disk result of a collection, loaded lazily, queried per neuron."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuronwidgets.checks import whole_number
from neuronwidgets.constants import MODALITIES
from neuronwidgets.records import ActivationRecord
from neuronwidgets.reduce.codes import dequantize, map_codes
from neuronwidgets.reduce.moments import HIST_EDGES
from neuronwidgets.reduce.state import LayerState
from neuronwidgets.store.codec import arrays_to_state, top_code_histograms
from neuronwidgets.store.layout import (
    EXPLANATIONS,
    MANIFEST,
    IndexFormatError,
    layer_file,
)
from neuronwidgets.store.reading import (
    checked_table,
    read_layer,
    read_layer_arrays,
    read_manifest,
    read_table,
)

if TYPE_CHECKING:
    import altair
    import matplotlib.figure
    import torch

    from neuronwidgets.datasets.base import Sample


def check_modality(modality: str) -> None:
    """A clear error unless `modality` is 'image' or 'text'."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")


# --- the index ------------------------------------------------------------------------
class NeuronIndex:
    """What a collection found, per neuron: statistics, top samples with their maps, exemplars."""

    def __init__(self, path: Path | None, manifest: dict, samples: pd.DataFrame, stats: pd.DataFrame,
                 arrays: dict[int, dict[str, np.ndarray]] | None = None, dataset: Sequence[Sample] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self.manifest = manifest
        self.samples = samples
        self._stats = stats
        self._arrays: dict[int, dict[str, np.ndarray]] = dict(arrays or {})
        self._category_cache: dict[tuple, pd.DataFrame] = {}  # categories() per rule and parameters
        self._dataset = None
        if dataset is not None:
            self.attach(dataset)  # checked by fingerprint, as attach() does

    # --- loading ---------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, expect_model: str | None = None, expect_site: str | None = None,
             dataset: Sequence[Sample] | None = None) -> NeuronIndex:
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
        samples = checked_table(path / "samples.parquet", read_table(path / "samples.parquet"), ("sample", "sample_id"),
                                manifest["n_samples"])
        stat_columns = ("layer", "neuron", *(f"{m}_{s}" for m in MODALITIES for s in ("count", "sum", "sumsq", "max")))
        stats = checked_table(path / "stats.parquet", read_table(path / "stats.parquet"), stat_columns,
                               len(manifest["layers"]) * manifest["n_neurons"])
        for layer in manifest["layers"]:
            if not layer_file(path, layer).exists():
                raise IndexFormatError(f"{str(layer_file(path, layer))!r} is missing from the index folder")
        return cls(path, manifest, samples, stats, dataset=dataset)

    def _layer(self, layer: int) -> dict[str, np.ndarray]:
        self._check_layer(layer)
        if layer not in self._arrays:
            self._arrays[layer] = read_layer(self.path, layer, self.manifest)
        return self._arrays[layer]

    def layer_arrays(self, layer: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Some of a layer's arrays by name: from memory when the layer was read, else only those from its file (not kept)."""
        self._check_layer(layer)
        if layer in self._arrays or self.path is None:
            arrays = self._layer(layer)
            return {name: arrays[name] for name in names}
        return read_layer_arrays(self.path, layer, names, self.manifest)

    def top_code_histograms(self, layer: int, modality: str = "image") -> np.ndarray:
        """[neurons, top_k, levels]: each top sample's count of patches (or text tokens) per map code 1..levels.

        The categories read these, not the maps, so they cover all top_k samples whether or
        not their maps were kept (int32, a new array on each call).
        """
        check_modality(modality)
        return top_code_histograms(self._layer(layer), self.manifest, modality)

    # --- facts -----------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """The recorded layers, ascending."""
        return list(self.manifest["layers"])

    @property
    def n_neurons(self) -> int:
        """Neurons per layer."""
        return int(self.manifest["n_neurons"])

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the image's patch grid (an error where it varies per sample: see `grid_of`)."""
        if self.manifest.get("grid") is None:
            raise ValueError(f"the patch grid of {self.model!r} varies per sample: read one sample's with index.grid_of(sample)")
        return tuple(self.manifest["grid"])

    @property
    def fixed_grid(self) -> bool:
        """One patch grid for every sample (LLaVA-1.5); False where each sample has its own (`grid_of`)."""
        return self.manifest.get("grid") is not None

    def grid_of(self, sample: int) -> tuple[int, int]:
        """(rows, cols) of sample `sample`'s patch grid: its first rows * cols stored patches, row-major."""
        if self.fixed_grid:
            return self.grid
        grids = getattr(self, "_grid_cache", None)
        if grids is None or grids[0] is not self.samples:
            s = self.samples
            table = {int(i): (int(r), int(c)) for i, r, c in zip(s["sample"], s["grid_rows"], s["grid_cols"])}
            grids = self._grid_cache = (self.samples, table)
        if int(sample) not in grids[1]:
            raise KeyError(f"sample {sample} is not in this index")
        return grids[1][int(sample)]

    @property
    def site(self) -> str:
        """Where the neurons were read ('act' or 'mlp_in')."""
        return self.manifest["site"]

    @property
    def model(self) -> str:
        """The model's name as the session gave it."""
        return self.manifest["model"]

    @property
    def top_k(self) -> int:
        """Top samples kept per neuron."""
        return int(self.manifest["top_k"])

    @property
    def n_samples(self) -> int:
        """Samples the collection ran over."""
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
        check_modality(modality)
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
            rows, cols = self.grid_of(sample)  # its first rows * cols stored patches are its grid
            out.append(
                ActivationRecord(
                    sample=sample,
                    sample_id=self.sample_id(sample),
                    activation=value,
                    patch_map=dequantize(get(i, img_name, P), scale, bits)[: rows * cols].reshape(rows, cols),
                    text_tokens=tokens[: len(text)],
                    text_activations=text,
                    kind=kind,
                )
            )
        return out

    def sample_id(self, sample: int) -> str:
        """The dataset's id of sample number `sample` (its position), as text."""
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
            check_modality(modality)
        if k is not None and whole_number(k, "k") < 0:
            raise ValueError(f"k is how many exemplars to return, so 0 or more (None for all); got {k}")
        arrays = self._layer(layer)
        neuron = self._check_neuron(neuron)
        frames = []
        for m in MODALITIES if modality is None else (modality,):
            v = arrays[f"tok_{m}_value"][neuron]
            s = arrays[f"tok_{m}_sample"][neuron].astype(np.int64)
            p = arrays[f"tok_{m}_pos"][neuron].astype(np.int64)
            keep = s >= 0
            v, s, p = v[keep], s[keep], p[keep]
            if m == "image":  # p: the patch's place in its sample's stored patches (its grid's first, row-major)
                grids = np.array([self.grid_of(int(si)) for si in s], np.int64).reshape(-1, 2)
                on_grid = p < grids[:, 0] * grids[:, 1]
                row = np.where(on_grid, p // np.maximum(grids[:, 1], 1), -1)
                col = np.where(on_grid, p % np.maximum(grids[:, 1], 1), -1)
                tok = [""] * len(p)
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
    def dataset(self) -> Sequence[Sample] | None:
        """The samples this index was collected over (attached, or rebuilt from the manifest's spec)."""
        if self._dataset is None:
            from neuronwidgets.datasets.spec import from_spec

            spec = self.manifest.get("dataset", {}).get("spec")
            if spec:
                self._dataset = from_spec(spec)
        return self._dataset

    def attach(self, dataset: Sequence[Sample]) -> NeuronIndex:
        """Attach the dataset the index was collected over (checked by fingerprint)."""
        want = self.manifest.get("dataset", {}).get("fingerprint")
        got = getattr(dataset, "fingerprint", None)
        whole = f"{got}[0:{len(dataset)}:1]" if got else None  # a dataset is its own whole slice: data == data[:len(data)]
        if want and got and want not in (got, whole):
            raise ValueError(f"dataset fingerprint {got!r} does not match the index's {want!r}")
        self._dataset = dataset
        return self

    def sample(self, i: int) -> Sample:
        """Sample number `i` of the attached dataset."""
        if self.dataset is None:
            raise ValueError("this index has no dataset attached; call index.attach(dataset) with the samples it was collected over")
        return self.dataset[int(i)]

    # --- categories (see categorize.py) -------------------------------------------------
    def categories(self, rule: str = "paper", **params: Any) -> pd.DataFrame:
        """One row per neuron with its category (see `neuronwidgets.categorize.categorize`); computed once per rule and parameters."""
        from neuronwidgets.categorize import cached_categories

        return cached_categories(self, rule, **params)

    def category_summary(self, rule: str = "paper", **params: Any) -> pd.DataFrame:
        """Per layer: the number and share of neurons in each category."""
        from neuronwidgets.categorize import summary

        return summary(self.categories(rule=rule, **params))

    def category_chart(self, rule: str = "paper", **params: Any) -> altair.Chart:
        """Altair chart of the categories' shares per layer."""
        from neuronwidgets.categorize import category_chart

        return category_chart(self.categories(rule=rule, **params))

    def category_figure(self, rule: str = "paper", **params: Any) -> matplotlib.figure.Figure:
        """Matplotlib figure of the categories' shares per layer."""
        from neuronwidgets.categorize import category_figure

        return category_figure(self.categories(rule=rule, **params))

    # --- explanations written by explain_all ------------------------------------------------
    def explanations(self) -> pd.DataFrame | None:
        """The explanations table `explain_all` wrote into the index folder (None: there is none)."""
        if self.path is None or not (self.path / EXPLANATIONS).exists():
            return None
        return read_table(self.path / EXPLANATIONS)

    # --- merging -----------------------------------------------------------------------------
    @classmethod
    def merge(cls, indexes: Sequence[NeuronIndex], path: str | Path, overwrite: bool = False) -> NeuronIndex:
        """Merge indexes of disjoint parts of one dataset into exactly the index of one pass (another index at `path`: overwrite=True)."""
        from neuronwidgets.store.merge import merge_indexes

        return merge_indexes(indexes, path, overwrite=overwrite)

    def to_state(self, device: str | torch.device = "cpu") -> dict[int, LayerState]:
        """The collector's mergeable per-layer state, rebuilt from the stored arrays (to resume or merge)."""
        out = {}
        for layer in self.layers:
            stats = self._stats[self._stats.layer == layer].sort_values("neuron")
            out[layer] = arrays_to_state(self._layer(layer), stats, self.manifest, device)
        return out
