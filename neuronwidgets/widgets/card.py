"""ExplanationCard: a neuron's explanation, its score against the baseline, its top exemplars and histogram."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets as t

from neuronwidgets.explain.data import sample_of
from neuronwidgets.widgets._base import NeuronWidget, f32, finite, i32, neuron_max, png

if TYPE_CHECKING:
    import pandas as pd

    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.decode.lm_head import NeuronDecoding
    from neuronwidgets.explain.explanation import Explanation
    from neuronwidgets.explain.scoring import ScoreResult
    from neuronwidgets.store.index import NeuronIndex

    #: What the card reads an explanation from, and a score from.
    ExplanationLike = Explanation | Mapping[str, Any] | pd.Series
    ScoreLike = ScoreResult | float | Mapping[str, Any] | None

HEADER_FIELDS = ("layer", "neuron", "category", "text", "explainer", "model", "concept", "prompt_version")
EXEMPLAR_IMAGE_SIDE = 128
EXEMPLAR_TOKENS = 32


def _get(obj, name, default=None):
    """A field of an Explanation / ScoreResult (attributes), a dict or a pandas row (keys)."""
    if obj is None:
        return default
    if isinstance(obj, dict) or (hasattr(obj, "get") and hasattr(obj, "index") and not hasattr(obj, "__dataclass_fields__")):
        return obj.get(name, default)
    return getattr(obj, name, default)


def header_of(explanation: ExplanationLike) -> dict[str, Any]:
    """The card's header from an Explanation, a dict or a row of `index.explanations()` (strings stay text)."""
    out: dict[str, Any] = {}
    for name in HEADER_FIELDS:
        value = _get(explanation, name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[name] = int(value) if name in ("layer", "neuron") else str(value)
    return out


def score_of(score: ScoreLike, explanation: ExplanationLike | None = None) -> dict[str, Any]:
    """{score, baseline, kinds} from a ScoreResult, a number, a dict, or the score columns of a table row."""
    if score is None:
        if finite(_get(explanation, "score")) is None:
            return {}
        score = {
            "score": _get(explanation, "score"),
            "baseline": _get(explanation, "baseline"),
            "scores": {k: _get(explanation, f"score_{k}") for k in ("top", "random")},
        }
    if isinstance(score, (int, float, np.floating)):
        return {"score": finite(score)} if finite(score) is not None else {}
    kinds = _get(score, "scores") or _get(score, "kinds") or {}
    out = {"score": finite(_get(score, "score")), "baseline": finite(_get(score, "baseline"))}
    out["kinds"] = {str(k): finite(v) for k, v in dict(kinds).items()}
    return {k: v for k, v in out.items() if v is not None}


def exemplars_of(index: NeuronIndex | None, layer: int, neuron: int, k: int,
                 dataset: Sequence[Sample] | None = None) -> list[dict[str, Any]]:
    """The neuron's top `k` records as small heatmaps: image PNG, patch map, text tokens with values."""
    if index is None or k <= 0:
        return []
    try:
        records = index.records(layer, neuron, "top")[:k]
    except (IndexError, KeyError, ValueError):
        return []
    data = dataset if dataset is not None else getattr(index, "dataset", None)
    out = []
    for rec in records:
        image = b""
        if data is not None:
            try:
                sample = sample_of(data, rec)  # by id where the dataset is not the index's own (a superset)
                image = png(sample.get_image() if hasattr(sample, "get_image") else sample.image, EXEMPLAR_IMAGE_SIDE,
                            crop=getattr(index, "manifest", {}).get("crop", True))  # False: the grid covers the whole image
            except Exception:  # no image for this sample: the heatmap alone
                image = b""
        patch_map = np.asarray(rec.patch_map, np.float32)
        tokens, values = list(rec.text_tokens), np.asarray(rec.text_activations, np.float32)
        if len(tokens) > EXEMPLAR_TOKENS:  # a window around the strongest token
            top = int(np.argmax(values)) if values.size else 0
            start = max(0, min(top - EXEMPLAR_TOKENS // 2, len(tokens) - EXEMPLAR_TOKENS))
            tokens, values = tokens[start:start + EXEMPLAR_TOKENS], values[start:start + EXEMPLAR_TOKENS]
        out.append({
            "sample_id": str(rec.sample_id),
            "kind": str(rec.kind),
            "activation": float(rec.activation),
            "image": image,
            "values": f32(patch_map.ravel()),
            "grid": [int(s) for s in patch_map.shape] if patch_map.ndim == 2 else [0, 0],
            "tokens": [str(x) for x in tokens],
            "text_values": f32(values),
        })
    return out


def histogram_of(index: NeuronIndex | None, layer: int, neuron: int) -> dict[str, Any]:
    """{modality: {edges, counts}} of the neuron's activation histograms in the index ({} without one)."""
    out = {}
    if index is None:
        return out
    for modality in ("image", "text"):
        try:
            edges, counts = index.histogram(layer, neuron, modality)
        except (IndexError, KeyError, ValueError, AttributeError):
            continue
        out[modality] = {"edges": f32(edges), "counts": i32(np.minimum(counts, np.iinfo(np.int32).max))}
    return out


# --- LM-head decoding (issue 25) ----------------------------------------------------------------
LOGIT_TOKENS = 10


def resolve_decoding(decoding: NeuronDecoding | str | None, index: NeuronIndex | None) -> NeuronDecoding | None:
    """The NeuronDecoding to show: the one given, or with "auto" the one saved in the index's folder (or None)."""
    if isinstance(decoding, str) and decoding == "auto":
        from neuronwidgets.decode import decoding_for

        return decoding_for(index) if index is not None else None
    return decoding


def logits_of(decoding: NeuronDecoding | None, layer: int, neuron: int, k: int = LOGIT_TOKENS) -> dict[str, Any]:
    """{kind: {promoted: [...], suppressed: [...]}} for the card's logit lists; {} when the neuron is not decoded."""
    if decoding is None:
        return {}
    try:
        return decoding.token_lists(layer, neuron, k=k)
    except KeyError:
        return {}
# --- end LM-head decoding ----------------------------------------------------------------------


def card_state(explanation: ExplanationLike | None, score: ScoreLike = None, index: NeuronIndex | None = None, *, k: int = 4,
               dataset: Sequence[Sample] | None = None, layer: int | None = None, neuron: int | None = None,
               decoding: NeuronDecoding | None = None) -> dict[str, Any]:
    """Everything the card shows, as one dict (the explorer sends it as one trait); `decoding`: a NeuronDecoding or None."""
    header = header_of(explanation) if explanation is not None else {}
    if layer is not None:
        header.setdefault("layer", int(layer))
        header.setdefault("neuron", int(neuron))
    if "layer" not in header:
        return {"header": {}, "score": {}, "exemplars": [], "hist": {}, "vmax": 1.0, "logits": {}}
    L, N = header["layer"], header["neuron"]
    vmax = neuron_max(index, L, N) or 1.0
    return {
        "header": header,
        "score": score_of(score, explanation),
        "exemplars": exemplars_of(index, L, N, k, dataset),
        "hist": histogram_of(index, L, N),
        "vmax": vmax,
        "logits": logits_of(decoding, L, N),
    }


class ExplanationCard(NeuronWidget):
    """A neuron at a glance: id, category badge, explanation, score beside its baseline, top
    exemplars as small heatmaps and the activation histogram.

    >>> nw.ExplanationCard(exp, result, index=index)

    `explanation`: an Explanation, a dict, or a row of `index.explanations()` (its score
    columns are used when `score` is None). `score`: a ScoreResult, a number or None. With
    `index` (a NeuronIndex) the card shows the neuron's top `k` records (images from the
    index's dataset, or `dataset=`) and its histograms. `decoding`: a NeuronDecoding whose
    promoted / suppressed tokens the card lists ("auto": the one saved in the index's folder).
    """

    _entry = "explanation_card.js"

    header = t.Dict().tag(sync=True)
    score = t.Dict().tag(sync=True)
    exemplars = t.List(t.Dict()).tag(sync=True)
    hist = t.Dict().tag(sync=True)
    vmax = t.Float(1.0).tag(sync=True)
    logits = t.Dict().tag(sync=True)

    def __init__(self, explanation: ExplanationLike | None, score: ScoreLike = None, *, index: NeuronIndex | None = None, k: int = 4,
                 dataset: Sequence[Sample] | None = None, decoding: NeuronDecoding | str | None = "auto", **kwargs: Any) -> None:
        self.explanation, self.result, self.index = explanation, score, index
        self.decoding = resolve_decoding(decoding, index)
        super().__init__(**card_state(explanation, score, index, k=k, dataset=dataset, decoding=self.decoding), **kwargs)

    def update(self, explanation: ExplanationLike | None, score: ScoreLike = None, *, index: NeuronIndex | None = None, k: int = 4,
               dataset: Sequence[Sample] | None = None) -> None:
        """Show another explanation (one message)."""
        self.explanation, self.result = explanation, score
        self.index = index if index is not None else self.index
        state = card_state(explanation, score, self.index, k=k, dataset=dataset, decoding=self.decoding)
        with self.hold_sync():
            for key, value in state.items():
                setattr(self, key, value)
