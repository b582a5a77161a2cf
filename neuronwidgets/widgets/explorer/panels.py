"""The explorer's panels for one trace and neuron: tokens, patches, the card, and the neuron list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from neuronwidgets.widgets._base import (
    f32,
    neuron_max,
    patch_top,
    scale_for,
    token_fields,
)

if TYPE_CHECKING:
    from neuronwidgets.model.trace import Trace
    from neuronwidgets.store.index import NeuronIndex


def heatmap_panels(trace: Trace, layer: int, neuron: int, index: NeuronIndex | None, k: int) -> dict[str, Any]:
    """tokens_view and patch_view for one trace and neuron, on the index's colour scale."""
    values = trace.neuron(layer, neuron)
    vmax = scale_for(values, neuron_max(index, layer, neuron))
    tops = trace.__dict__.setdefault("_nw_patch_top", {})  # cached on the (cached) trace
    if layer not in tops:
        tops[layer] = patch_top(trace, layer, k)
    ids, vals, k = tops[layer]
    return {
        "tokens_view": {**token_fields(trace), "values": f32(values), "vmax": vmax},
        "patch_view": {"values": f32(trace.image_map(layer, neuron).ravel()), "grid": [int(g) for g in trace.grid],
                       "vmax": vmax, "top_ids": ids, "top_values": vals, "k": k, "layer": int(layer)},
    }


def neuron_matches(explanations: dict, categories: dict, search: str, category: str, limit: int) -> list[dict]:
    """The neuron list: neurons of `category` whose explanation holds `search`, explained and best-scored first."""
    q = search.strip().lower()
    rows = []
    for key in set(explanations) | set(categories):
        c = categories.get(key) or (explanations.get(key) or {}).get("category") or ""
        if c == "inactive" and category != "inactive":
            continue
        if category and c != category:
            continue
        row = explanations.get(key) or {}
        text = str(row.get("text") or "")
        if q and q not in text.lower():
            continue
        score = row.get("score")
        rows.append((0 if text else 1, -(score if score is not None and np.isfinite(score) else -2.0), key, c, text))
    rows.sort()
    return [{"layer": k[0], "neuron": k[1], "category": c, "text": text} for _, _, k, c, text in rows[:limit]]
