"""Sort neurons into visual, text and multi-modal ones; per-layer tables and charts.

rule="paper" (default): on the neuron's 0-10 scale (its global max), a top sample is
visually activated if at least `visual_min_patches` patches exceed `visual_threshold`
(default: the paper's 4 of LLaVA's 576 patches, scaled to the index's grid and at least 1, so
a 4x4 grid needs 1: see `paper_min_patches`), and
text-activated if at least `text_min_tokens` text tokens exceed `text_threshold`; it is then
visual, text, multi-modal (both) or unactivated; the neuron takes its samples' most frequent
label (ties go to the earlier of visual, text, multi-modal, unactivated). The per-label counts
are returned beside it, since this rule is known to inflate the multi-modal share.
rule="share": the share of image tokens among the neuron's top-N token activations (optionally
`balanced`, each modality weighed by the inverse of its token count), with the base rate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuronwidgets.checks import whole_number
from neuronwidgets.records import discretize

LABELS = ("visual", "text", "multi-modal", "unactivated")
CATEGORIES = ("visual", "text", "multi-modal", "unactivated", "inactive")
COLORS = {"visual": "#1f77b4", "text": "#ff7f0e", "multi-modal": "#2ca02c", "unactivated": "#bbbbbb", "inactive": "#555555"}


PAPER_PATCHES, PAPER_MIN_PATCHES = 576, 4


def paper_min_patches(n_patches: int) -> int:
    """The paper's "at least 4 of 576 patches", as a share of a grid of `n_patches` (at least 1)."""
    return max(1, round(PAPER_MIN_PATCHES * n_patches / PAPER_PATCHES))


def sample_labels(image_levels: np.ndarray, text_levels: np.ndarray, *, visual_threshold: int = 2, visual_min_patches: int = 4,
                  text_threshold: int = 3, text_min_tokens: int = 2) -> np.ndarray:
    """Label each sample from its 0-10 levels: image [..., patches], text [..., tokens] -> str array [...]."""
    visual = (np.asarray(image_levels) > visual_threshold).sum(-1) >= visual_min_patches
    text = (np.asarray(text_levels) > text_threshold).sum(-1) >= text_min_tokens
    return _label(visual, text)


def _label(visual: np.ndarray, text: np.ndarray) -> np.ndarray:
    return np.where(visual & text, "multi-modal", np.where(visual, "visual", np.where(text, "text", "unactivated")))


def categorize(index, rule: str = "paper", *, top_n: int | None = None, visual_threshold: int = 2, visual_min_patches: int | None = None,
               text_threshold: int = 3, text_min_tokens: int = 2, visual_share: float = 0.9, text_share: float = 0.1,
               balanced: bool = False) -> pd.DataFrame:
    """One row per neuron: layer, neuron, category, the counts behind it, image_share, max."""
    if rule not in ("paper", "share"):
        raise ValueError(f"rule must be 'paper' or 'share', got {rule!r}")
    if min(visual_threshold, text_threshold) < 0:
        raise ValueError(f"thresholds are levels on the 0-10 scale, so 0 or more; got visual_threshold={visual_threshold}, text_threshold={text_threshold}")
    if top_n is not None and whole_number(top_n, "top_n") < 1:
        raise ValueError(f"top_n is how many top samples per neuron to read, so 1 or more (None for all {index.top_k}); got {top_n}")
    top_n = min(index.top_k if top_n is None else int(top_n), index.top_k)
    if visual_min_patches is None:
        visual_min_patches = paper_min_patches(int(index.manifest["n_patches"]))
    stats = index.stats()
    frames = []
    for layer in index.layers:
        arrays = index._layer(layer)
        st = stats[stats.layer == layer].sort_values("neuron")
        gmax = st["max"].to_numpy(np.float64)
        n = len(gmax)
        share, share_bal, base = _image_share(arrays, st, top_n)
        df = pd.DataFrame({"layer": layer, "neuron": np.arange(n)})
        if rule == "paper":
            counts = _paper_counts(index, layer, arrays, gmax, top_n, visual_threshold, visual_min_patches, text_threshold, text_min_tokens)
            for label in LABELS:
                df[f"n_{label.replace('-', '')}"] = counts[label]
            stacked = np.stack([counts[label] for label in LABELS], 1)
            category = np.asarray(LABELS)[np.argmax(stacked, 1)]
        else:
            value = share_bal if balanced else share
            category = np.where(value >= visual_share, "visual", np.where(value <= text_share, "text", "multi-modal"))
        df["category"] = np.where(gmax > 0, category, "inactive")
        df["image_share"] = share
        df["image_share_balanced"] = share_bal
        df["image_base_rate"] = base
        df["max"] = gmax
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    cols = ["layer", "neuron", "category"] + [c for c in out.columns if c not in ("layer", "neuron", "category")]
    return out[cols]


def _paper_counts(index, layer, arrays, gmax, top_n, vt, vmin, tt, tmin, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Per neuron, how many of its top_n samples carry each label, from the samples' code histograms."""
    q = (1 << index.manifest["map_bits"]) - 1
    value = arrays["top_value"][:, :top_n].astype(np.float64)
    valid = arrays["top_sample"][:, :top_n] >= 0
    scale = np.maximum(np.where(valid, value, 0.0), 0.0)[:, :, None] / q
    hists = {m: index.top_code_histograms(layer, m)[:, :top_n] for m in ("image", "text")}
    counts = {label: np.zeros(len(value), np.int64) for label in LABELS}
    for lo in range(0, len(value), chunk):  # [chunk, top_n, q] at a time: bounded memory at LLaVA's 11008 neurons
        part = slice(lo, lo + chunk)
        code_values = np.arange(1, q + 1, dtype=np.uint8)[None, None, :] * scale[part]  # the value each code 1..q stands for
        levels = discretize(code_values, gmax[part, None, None])  # [chunk, top_n, q]
        visual = (hists["image"][part] * (levels > vt)).sum(-1) >= vmin  # patches above the threshold
        text = (hists["text"][part] * (levels > tt)).sum(-1) >= tmin  # text tokens above it
        labels = np.where(valid[part], _label(visual, text), "")
        for label in LABELS:
            counts[label][part] = (labels == label).sum(1)
    return counts


def _image_share(arrays, st, top_n):
    """Share of image tokens among each neuron's top-N token activations (plain and balanced)."""
    vi, vt = arrays["tok_image_value"], arrays["tok_text_value"]
    si, stt = arrays["tok_image_sample"] >= 0, arrays["tok_text_sample"] >= 0
    values = np.concatenate([np.where(si, vi, -np.inf), np.where(stt, vt, -np.inf)], 1)
    is_image = np.concatenate([np.ones_like(vi, bool), np.zeros_like(vt, bool)], 1)
    order = np.argsort(-values, axis=1, kind="stable")[:, :top_n]
    picked_valid = np.isfinite(np.take_along_axis(values, order, 1))
    picked_image = np.take_along_axis(is_image, order, 1) & picked_valid
    n_img = picked_image.sum(1).astype(np.float64)
    n_all = np.maximum(picked_valid.sum(1), 1).astype(np.float64)
    share = n_img / n_all
    ci = max(float(st["image_count"].iloc[0]), 1.0)
    ct = max(float(st["text_count"].iloc[0]), 1.0)
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


def category_chart(categories: pd.DataFrame):
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


def category_figure(categories: pd.DataFrame, ax=None):
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
