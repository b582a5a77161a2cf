"""Sort neurons into visual, text and multi-modal ones; per-layer tables and charts.

rule="paper" (default): on the neuron's 0-10 scale (its global max), a top sample is
visually activated if at least `visual_min_patches` patches exceed `visual_threshold`
(default: the paper's 4 of LLaVA's 576 patches, scaled to the index's grid and at least 1, so
a 4x4 grid needs 1: see `paper_min_patches`; where the grid varies per sample, to each top sample's
own grid, grid_rows * grid_cols, not the padded width; a number given applies to every sample), and
text-activated if at least `text_min_tokens` text tokens exceed `text_threshold`; it is then
visual, text, multi-modal (both) or unactivated; the neuron takes its samples' most frequent
label (ties go to the earlier of visual, text, multi-modal, unactivated). The per-label counts
are returned beside it, since this rule is known to inflate the multi-modal share.
rule="share": the share of image tokens among the neuron's top-N token activations (optionally
`balanced`, each modality weighed by the inverse of its token count), with the base rate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuronwidgets.checks import whole_number
from neuronwidgets.constants import CATEGORIES, LABELS

if TYPE_CHECKING:
    import altair as alt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from neuronwidgets.store.index import NeuronIndex

COLORS = {"visual": "#1f77b4", "text": "#ff7f0e", "multi-modal": "#2ca02c", "unactivated": "#bbbbbb", "inactive": "#555555"}


PAPER_PATCHES, PAPER_MIN_PATCHES = 576, 4
RULES = ("paper", "share")
#: The arrays of a layer file that the categories read (never the maps, where a file keeps every top sample's histogram).
CATEGORY_ARRAYS = ("top_value", "top_sample", "top_image_hist", "top_text_hist", "tok_image_value", "tok_image_sample",
                   "tok_text_value", "tok_text_sample")


def paper_min_patches(n_patches: int) -> int:
    """The paper's "at least 4 of 576 patches", as a share of a grid of `n_patches` (at least 1)."""
    return max(1, round(PAPER_MIN_PATCHES * n_patches / PAPER_PATCHES))


def sample_min_patches(index: NeuronIndex) -> np.ndarray | None:
    """Per sample id, the paper's patches on its own main grid (`paper_min_patches`); None where the grid is fixed."""
    if index.fixed_grid:
        return None
    s = index.samples
    missing = {"sample", "grid_rows", "grid_cols"} - set(s.columns)
    if missing:
        raise ValueError(f"the patch grid of {index.model!r} varies per sample, but its samples table lacks {sorted(missing)}")
    ids = s["sample"].to_numpy(np.int64)
    n = s["grid_rows"].to_numpy(np.int64) * s["grid_cols"].to_numpy(np.int64)
    out = np.zeros(int(ids.max()) + 1 if len(ids) else 1, np.int64)
    out[ids] = np.maximum(1, np.round(PAPER_MIN_PATCHES * n / PAPER_PATCHES)).astype(np.int64)  # as paper_min_patches: half to even
    return out


def sample_labels(image_levels: np.ndarray, text_levels: np.ndarray, *, visual_threshold: int = 2, visual_min_patches: int = 4,
                  text_threshold: int = 3, text_min_tokens: int = 2) -> np.ndarray:
    """Label each sample from its 0-10 levels: image [..., patches], text [..., tokens] -> str array [...]."""
    visual = (np.asarray(image_levels) > visual_threshold).sum(-1) >= visual_min_patches
    text = (np.asarray(text_levels) > text_threshold).sum(-1) >= text_min_tokens
    return _label(visual, text)


def _label(visual: np.ndarray, text: np.ndarray) -> np.ndarray:
    return np.where(visual & text, "multi-modal", np.where(visual, "visual", np.where(text, "text", "unactivated")))


def category_params(index: NeuronIndex, rule: str = "paper", *, top_n: int | None = None, visual_threshold: int = 2,
                    visual_min_patches: int | None = None, text_threshold: int = 3, text_min_tokens: int = 2,
                    visual_share: float = 0.9, text_share: float = 0.1, balanced: bool = False) -> dict:
    """The parameters of a categorisation, checked and resolved (defaults filled in): one dict for calls that mean the same."""
    if rule not in RULES:
        raise ValueError(f"rule must be 'paper' or 'share', got {rule!r}")
    if min(visual_threshold, text_threshold) < 0:
        raise ValueError(f"thresholds are levels on the 0-10 scale, so 0 or more; got visual_threshold={visual_threshold}, "
                         f"text_threshold={text_threshold}")
    if top_n is not None and whole_number(top_n, "top_n") < 1:
        raise ValueError(f"top_n is how many top samples per neuron to read, so 1 or more (None for all {index.top_k}); got {top_n}")
    top_n = min(index.top_k if top_n is None else int(top_n), index.top_k)
    if visual_min_patches is None and index.fixed_grid:  # else None: each top sample's own (`sample_min_patches`)
        visual_min_patches = paper_min_patches(int(index.manifest["n_patches"]))
    out = {"rule": rule, "top_n": top_n}
    if rule == "paper":
        out.update(visual_threshold=visual_threshold, visual_min_patches=visual_min_patches, text_threshold=text_threshold,
                   text_min_tokens=text_min_tokens)
    else:
        out.update(visual_share=visual_share, text_share=text_share, balanced=bool(balanced))
    return out


def _cache_key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def cached_categories(index: NeuronIndex, rule: str = "paper", **params: Any) -> pd.DataFrame:
    """`categorize`, computed once per index, rule and parameters (a copy each time: callers may change theirs)."""
    resolved = category_params(index, rule, **params)
    cache = index.__dict__.setdefault("_category_cache", {})
    key = _cache_key(resolved)
    if key not in cache:
        cache[key] = categorize(index, rule, **params)
    return cache[key].copy()


def neuron_category(index: NeuronIndex, layer: int, neuron: int, rule: str = "paper", **params: Any) -> str:
    """The category of one neuron: from the index's cached table when there is one, else from that neuron's arrays alone."""
    layer, neuron = index._check_layer(layer), index._check_neuron(neuron)
    resolved = category_params(index, rule, **params)
    table = index.__dict__.get("_category_cache", {}).get(_cache_key(resolved))
    if table is not None:
        row = table[(table["layer"] == layer) & (table["neuron"] == neuron)]
        return str(row["category"].iloc[0])
    return str(_categorize_layer(index, layer, resolved, neurons=np.array([neuron]))["category"].iloc[0])


def categorize(index: NeuronIndex, rule: str = "paper", *, top_n: int | None = None, visual_threshold: int = 2,
               visual_min_patches: int | None = None, text_threshold: int = 3, text_min_tokens: int = 2,
               visual_share: float = 0.9, text_share: float = 0.1, balanced: bool = False) -> pd.DataFrame:
    """One row per neuron: layer, neuron, category, the counts behind it, image_share, max."""
    params = category_params(index, rule, top_n=top_n, visual_threshold=visual_threshold, visual_min_patches=visual_min_patches,
                             text_threshold=text_threshold, text_min_tokens=text_min_tokens, visual_share=visual_share,
                             text_share=text_share, balanced=balanced)
    stats = index.stats()
    frames = [_categorize_layer(index, layer, params, stats=stats) for layer in index.layers]
    out = pd.concat(frames, ignore_index=True)
    cols = ["layer", "neuron", "category"] + [c for c in out.columns if c not in ("layer", "neuron", "category")]
    return out[cols]


def _layer_arrays(index, layer: int) -> dict[str, np.ndarray]:
    """The arrays of `layer` the categories read: only those where the index reads arrays by name (the maps stay on disk)."""
    read = getattr(index, "layer_arrays", None)
    if read is None:
        return index._layer(layer)
    arrays = read(layer, CATEGORY_ARRAYS)
    if arrays["top_image_hist"].shape[1] < index.top_k:  # an older file: histograms past map_k only, the rest from the maps
        arrays = {**arrays, **read(layer, ("top_image_codes", "top_text_codes"))}
    return arrays


def _top_histograms(index, arrays: dict[str, np.ndarray], modality: str) -> np.ndarray:
    """[neurons, top_k, levels] code histograms of every top sample: as stored, or (older files) with the kept maps' counted."""
    hist = arrays[f"top_{modality}_hist"]
    if hist.shape[1] == index.top_k:
        return hist
    from neuronwidgets.store.codec import top_code_histograms

    return top_code_histograms(arrays, index.manifest, modality)


def _categorize_layer(index, layer: int, params: dict, stats: pd.DataFrame | None = None,
                      neurons: np.ndarray | None = None) -> pd.DataFrame:
    """The categories of one layer's neurons (all, or `neurons`)."""
    arrays = _layer_arrays(index, layer)
    st = index.stats(layer) if stats is None else stats[stats.layer == layer]
    st = st.sort_values("neuron")
    if neurons is not None:
        neurons = np.asarray(neurons, np.int64)
        st = st.iloc[neurons]
        arrays = {k: v[neurons] for k, v in arrays.items() if k.startswith(("top_", "tok_"))}
    top_n = params["top_n"]
    gmax = st["max"].to_numpy(np.float64)
    share, share_bal, base = _image_share(arrays, st, top_n)
    df = pd.DataFrame({"layer": layer, "neuron": np.arange(len(gmax)) if neurons is None else neurons})
    if params["rule"] == "paper":
        top_sample = arrays["top_sample"][:, :top_n]
        vmin = params["visual_min_patches"]
        if vmin is None:  # the grid varies per sample: each top sample's own threshold [n, s]
            vmin = sample_min_patches(index)[np.maximum(top_sample, 0)]
        counts = paper_counts(arrays["top_value"][:, :top_n], top_sample >= 0, gmax,
                              _top_histograms(index, arrays, "image")[:, :top_n], _top_histograms(index, arrays, "text")[:, :top_n],
                              (1 << index.manifest["map_bits"]) - 1, params["visual_threshold"], vmin,
                              params["text_threshold"], params["text_min_tokens"])
        for label in LABELS:
            df[f"n_{label.replace('-', '')}"] = counts[label]
        stacked = np.stack([counts[label] for label in LABELS], 1)
        category = np.asarray(LABELS, dtype=object)[np.argmax(stacked, 1)]
    else:
        value = share_bal if params["balanced"] else share
        category = np.where(value >= params["visual_share"], "visual", np.where(value <= params["text_share"], "text", "multi-modal"))
    df["category"] = np.where(gmax > 0, category, "inactive")
    df["image_share"] = share
    df["image_share_balanced"] = share_bal
    df["image_base_rate"] = base
    df["max"] = gmax
    return df


def first_code_above(scale: np.ndarray, gmax: np.ndarray, threshold: float, q: int) -> np.ndarray:
    """Per sample [n, s], the smallest map code 1..q whose 0-10 level exceeds `threshold` (q + 1 where none does).

    Code c of a sample stands for c * scale (scale: the sample's max / q); its level on the
    neuron's scale (gmax [n, 1]) is `discretize(c * scale, gmax)`, which exceeds a threshold t < 10
    exactly when gmax is usable and 10 * (c * scale) / gmax >= floor(t) + 1 (floor(x) > t iff
    x >= floor(t) + 1; NaN: never). That test, with the same floating-point operations, grows
    with c: the answer is an estimate, checked there and a code below, and moved a code at a
    time where the check fails (rounding at a boundary). Exact.
    """
    scale = np.asarray(scale, np.float64)
    g = np.broadcast_to(np.asarray(gmax, np.float64), scale.shape)
    bound = float(math.floor(threshold) + 1)  # an integer level exceeds t when it reaches this
    if bound > 10:  # levels stop at 10
        return np.full(scale.shape, q + 1, np.int16)
    usable = np.isfinite(g) & (g > 0)  # elsewhere every level is 0

    def above(c: np.ndarray, sc: np.ndarray, gg: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return 10.0 * (c * sc) / gg >= bound

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        estimate = np.ceil(bound * g / (10.0 * scale))
    code = np.clip(np.where(usable & ~np.isnan(estimate), estimate, q + 1), 1, q + 1)  # float: exact small integers
    todo = None  # first the whole array, then the samples that moved
    for _ in range(q + 2):
        c, sc, gg, ok = (code, scale, g, usable) if todo is None else (code[todo], scale[todo], g[todo], usable[todo])
        down = ok & (c > 1) & above(np.maximum(c - 1, 1), sc, gg)  # a smaller code is above too
        up = ok & ~down & (c <= q) & ~above(np.minimum(c, q), sc, gg)  # this one is not above
        moved = np.flatnonzero(down | up)
        if not moved.size:
            return code.astype(np.int16)
        step = (up.astype(np.int8) - down).ravel()[moved]
        todo = np.unravel_index(moved, code.shape) if todo is None else tuple(t[moved] for t in todo)
        code[todo] += step
    raise AssertionError("unreachable: each step moves a code by one, towards the answer")  # pragma: no cover


def counts_from(hist: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Per sample, how many of its patches (tokens) have a code >= first: hist [..., q] counts the codes 1..q."""
    q = hist.shape[-1]
    by_code = np.ascontiguousarray(hist.reshape(-1, q).T)  # [q, samples]: one contiguous row per code
    at_least = np.zeros((q + 2, by_code.shape[1]), np.result_type(hist.dtype, np.uint16))  # [c]: codes >= c; q + 1: none
    for c in range(q, 0, -1):
        np.add(at_least[c + 1], by_code[c - 1], out=at_least[c])
    f = first.reshape(-1)
    return at_least[f, np.arange(f.size)].reshape(first.shape)


def paper_counts(top_value: np.ndarray, valid: np.ndarray, gmax: np.ndarray, image_hist: np.ndarray, text_hist: np.ndarray, q: int,
                 vt: int, vmin: int | np.ndarray, tt: int, tmin: int) -> dict[str, np.ndarray]:
    """Per neuron, how many of its top samples carry each label, from the samples' code histograms ([n, s, q]).

    A sample's code c stands for c / q of its max (top_value), whose level on the neuron's scale
    (gmax) is `discretize`'s; it is visually activated when more than vmin - 1 of its patches
    are above level vt, text-activated when tmin of its text tokens are above tt. vmin: one number,
    or one per sample [n, s] (a grid that varies per sample).
    """
    scale = np.maximum(np.where(valid, top_value.astype(np.float64), 0.0), 0.0) / q
    g = np.asarray(gmax, np.float64)[:, None]
    visual = counts_from(image_hist, first_code_above(scale, g, vt, q)) >= vmin
    text = counts_from(text_hist, first_code_above(scale, g, tt, q)) >= tmin
    label = np.where(visual, np.where(text, 2, 0), np.where(text, 1, 3))  # the index in LABELS
    label = np.where(valid, label, -1)
    return {name: (label == i).sum(1).astype(np.int64) for i, name in enumerate(LABELS)}


def _image_share(arrays, st, top_n):
    """Share of image tokens among each neuron's top-N token activations (plain and balanced)."""
    vi, vt = arrays["tok_image_value"], arrays["tok_text_value"]
    si, stt = arrays["tok_image_sample"] >= 0, arrays["tok_text_sample"] >= 0
    values = np.concatenate([np.where(si, vi, -np.inf), np.where(stt, vt, -np.inf)], 1)
    order = np.argsort(-values, axis=1, kind="stable")[:, :top_n]  # ties: image tokens first
    picked_valid = np.isfinite(np.take_along_axis(values, order, 1))
    picked_image = (order < vi.shape[1]) & picked_valid  # the image tokens come first in `values`
    n_img = picked_image.sum(1).astype(np.float64)
    n_all = np.maximum(picked_valid.sum(1), 1).astype(np.float64)
    share = n_img / n_all
    ci = max(float(st["image_count"].iloc[0]), 1.0) if len(st) else 1.0
    ct = max(float(st["text_count"].iloc[0]), 1.0) if len(st) else 1.0
    wi, wt = n_img / ci, (n_all - n_img) / ct
    with np.errstate(invalid="ignore", divide="ignore"):
        balanced = np.where(wi + wt > 0, wi / (wi + wt), 0.0)
    base = np.full(len(share), ci / (ci + ct))
    return share, balanced, base


def summary(categories: pd.DataFrame) -> pd.DataFrame:
    """Per layer: the number and the share of neurons in each category."""
    counts = categories.pivot_table(index="layer", columns="category", values="neuron", aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=[c for c in CATEGORIES if c in counts.columns or c != "unactivated"], fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0).add_suffix("_share")
    return pd.concat([counts, shares], axis=1).reset_index()


def _long(categories: pd.DataFrame) -> pd.DataFrame:
    df = categories.groupby(["layer", "category"]).size().rename("neurons").reset_index()
    df["share"] = df["neurons"] / df.groupby("layer")["neurons"].transform("sum")
    return df


def category_chart(categories: pd.DataFrame) -> alt.Chart:
    """Altair: share of each category per layer (stacked bars), like the paper's figure."""
    import altair as alt

    df = _long(categories)
    present = [c for c in CATEGORIES if c in set(df.category)]
    return (
        alt.Chart(df, title="Neuron categories per layer")
        .mark_bar()
        .encode(
            x=alt.X("layer:O", title="layer"),
            y=alt.Y("share:Q", title="share of neurons", stack="normalize", axis=alt.Axis(format="%")),
            color=alt.Color("category:N", scale=alt.Scale(domain=present, range=[COLORS[c] for c in present])),
            order=alt.Order("category:N"),
            tooltip=["layer", "category", "neurons", alt.Tooltip("share:Q", format=".1%")],
        )
        .properties(width=max(200, 18 * categories.layer.nunique()), height=220)
    )


def category_figure(categories: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Matplotlib: the same stacked shares, for papers."""
    import matplotlib.pyplot as plt

    df = _long(categories).pivot(index="layer", columns="category", values="share").fillna(0.0)
    present = [c for c in CATEGORIES if c in df.columns]
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(df)), 3))
    else:
        fig = ax.figure
    bottom = np.zeros(len(df))
    for c in present:
        ax.bar(df.index.astype(str), df[c].to_numpy(), bottom=bottom, color=COLORS[c], label=c)
        bottom += df[c].to_numpy()
    ax.set_xlabel("layer")
    ax.set_ylabel("share of neurons")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), frameon=False)
    ax.set_title("Neuron categories per layer")
    fig.tight_layout()
    return fig
