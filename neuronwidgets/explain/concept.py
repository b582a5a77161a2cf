"""The concept family: explain a neuron by the concept formula whose masks best match it; simulate by painting them.

Offline and deterministic, for datasets with concept masks (Shapes; COCO instance masks).
In the spirit of Network Dissection (Bau et al. 2017) and its compositional extension (Mu &
Andreas 2020): a patch is *active* where the neuron reaches `threshold` x its global max;
a concept is *present* in a patch that it covers by at least `mask_threshold`; the
explanation is the formula (a concept, or concepts joined by AND / OR, found by beam
search) with the highest intersection-over-union between the two over the neuron's top and
random records. Text tokens take part too: a concept is present on a token whose text is
the concept's name (so a neuron that fires on the word "red" is explained by "red").
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from neuronwidgets.checks import whole_number
from neuronwidgets.explain import formula as fm
from neuronwidgets.explain.data import category_of, dataset_of, sample_of
from neuronwidgets.explain.explanation import Explanation
from neuronwidgets.records import ActivationRecord

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.store.index import NeuronIndex

CONCEPT_VERSION = "concept-v1"
#: Words a free-text explanation uses around its concepts ("the word red", "red patches"), never painted by themselves.
STOPWORDS = frozenset("a an the of and or in on to is are with word words token tokens patch patches image images region regions "
                      "object objects any that this its which".split())


class _MaskCache:
    """Per-sample patch masks (sample.patch_masks is not free), least recently used first out."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._d: OrderedDict = OrderedDict()

    def get(self, sample, rows: int, cols: int) -> dict[str, np.ndarray]:
        key = (getattr(sample, "id", id(sample)), rows, cols)
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        masks = {fm.normalize(k): np.asarray(v, np.float64).ravel() for k, v in sample.patch_masks(rows, cols).items()}
        self._d[key] = masks
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return masks


_shared_masks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def masks_of(data: NeuronIndex | Sequence[Sample] | None, own: _MaskCache) -> _MaskCache:
    """The patch-mask cache of dataset `data`, shared by every concept explainer and simulator over it (`own` where it
    cannot be shared: no dataset, or one that takes no weak reference)."""
    if data is None:
        return own
    try:
        with _shared_lock:
            cache = _shared_masks.get(data)
            if cache is None:
                cache = _shared_masks[data] = _MaskCache()
            return cache
    except TypeError:  # a plain list: neither weakly referenced nor hashed
        return own


def _category(index, layer: int, neuron: int, rule: str) -> str:
    """The neuron's category: that neuron's alone (not the whole index's table) unless the index has it cached."""
    if hasattr(index, "manifest") and hasattr(index, "stats"):
        from neuronwidgets.categorize import neuron_category

        return neuron_category(index, layer, neuron, rule)
    return category_of(index, layer, neuron, rule)


def _records(index, layer: int, neuron: int, include_random: bool) -> list[ActivationRecord]:
    recs = list(index.records(layer, neuron, "top"))
    if include_random:
        seen = {r.sample for r in recs}
        recs += [r for r in index.records(layer, neuron, "random") if r.sample not in seen]
    return recs


class ConceptExplainer:
    """Explain neurons by concept masks: `ConceptExplainer(data).explain(index, layer=3, neuron=117)`.

    `data` is the dataset the index was collected over (default: `index.dataset`).
    """

    name = "concept"

    def __init__(self, data: NeuronIndex | Sequence[Sample] | None = None, *, threshold: float = 0.3, mask_threshold: float = 0.1,
                 max_terms: int = 2, beam: int = 5, min_gain: float = 0.05, ops: tuple[str, ...] = ("AND", "OR"),
                 include_random: bool = True, category_rule: str = "paper", exclude: tuple[str, ...] = ()) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold is a share of the neuron's max, in (0, 1]; got {threshold}")
        self.data = data
        self.threshold = threshold
        self.mask_threshold = mask_threshold
        if whole_number(max_terms, "max_terms") < 1 or whole_number(beam, "beam") < 1:
            raise ValueError(f"max_terms and beam must be 1 or more, got max_terms={max_terms}, beam={beam}")
        ops = tuple(o.upper() for o in ((ops,) if isinstance(ops, str) else ops))
        if set(ops) - {"AND", "OR"}:
            raise ValueError(f"ops combine concepts with 'AND' and 'OR' only, got {ops}")
        self.max_terms = int(max_terms)
        self.beam = int(beam)
        self.min_gain = min_gain
        self.ops = ops
        self.include_random = include_random
        self.category_rule = category_rule
        self.exclude = {fm.normalize(e) for e in exclude}
        self._masks = _MaskCache()

    def __repr__(self) -> str:
        return f"<ConceptExplainer threshold={self.threshold} max_terms={self.max_terms}>"

    @property
    def settings(self) -> dict:
        """What shapes an explanation besides the neuron's records (explain_all explains again when it changes)."""
        return {"threshold": self.threshold, "mask_threshold": self.mask_threshold, "max_terms": self.max_terms, "beam": self.beam,
                "min_gain": self.min_gain, "ops": list(self.ops), "include_random": self.include_random,
                "category_rule": self.category_rule, "exclude": sorted(self.exclude)}

    @property
    def unread_kinds(self) -> tuple[str, ...]:
        """The kinds of a neuron's records in the index that the search leaves alone, to score on: none, or the random ones."""
        return () if self.include_random else ("random",)

    # --- the evidence: active patches / tokens and where each concept is present ------------------
    def _evidence(self, index, layer: int, neuron: int, modality: str):
        records = _records(index, layer, neuron, self.include_random)
        if not records:
            raise ValueError("the index keeps no maps to read concepts from (collected with map_k=0 and random_k=0): "
                             "collect with map_k > 0, the maps of each neuron's top samples")
        vmax = index.neuron_max(layer, neuron)
        source = self.data if self.data is not None else index
        blocks: list[tuple[np.ndarray, dict[str, np.ndarray], int]] = []  # (active, {concept: present}, size) per modality
        if modality in ("image", "both"):
            if dataset_of(source) is None:
                raise ValueError("no dataset with concept masks: pass ConceptExplainer(data) or attach the dataset to the index")
            act = np.stack([np.asarray(r.patch_map, np.float64).ravel() for r in records]) >= self.threshold * vmax
            rows, cols = np.shape(records[0].patch_map)
            cache = masks_of(dataset_of(source), self._masks)
            masks = [cache.get(sample_of(source, r), rows, cols) for r in records]
            names = sorted({k for m in masks for k in m})
            if not names:
                raise ValueError("the dataset's samples have no concept masks (Sample.masks); the concept explainer needs them")
            cover = {c: np.stack([m.get(c, np.zeros(rows * cols)) for m in masks]) >= self.mask_threshold for c in names}
            blocks.append((act.ravel(), {c: v.ravel() for c, v in cover.items()}, act.size))
        if modality in ("text", "both"):
            toks = [fm.normalize(t) for r in records for t in r.text_tokens]
            vals = np.concatenate([np.asarray(r.text_activations, np.float64)[: len(r.text_tokens)] for r in records] or [np.zeros(0)])
            act = vals >= self.threshold * vmax
            words = sorted({t for t in toks if any(ch.isalnum() for ch in t)})
            arr = np.asarray(toks, dtype=object)
            blocks.append((act, {w: arr == w for w in words}, act.size))
        # A token such as "f(x)" cannot be a formula term: left out rather than mis-parsed.
        names = sorted(c for c in {c for _, pres, _ in blocks for c in pres} - self.exclude if fm.is_term(c))
        full = {c: np.concatenate([pres.get(c, np.zeros(n, bool)) for _, pres, n in blocks]) for c in names}
        return records, np.concatenate([a for a, _, _ in blocks]), full

    # --- the search --------------------------------------------------------------------------
    def ranking(self, index: NeuronIndex, layer: int, neuron: int, category: str | None = None, top: int = 10) -> pd.DataFrame:
        """The best formulas for a neuron with their IoU (what `explain` chooses from)."""
        category = category or _category(index, layer, neuron, self.category_rule)
        _, active, present = self._evidence(index, layer, neuron, _modality(category))
        found = self._search(active, present)
        return pd.DataFrame(found[:top], columns=["formula", "iou", "terms"])

    def _search(self, active: np.ndarray, present: dict[str, np.ndarray]) -> list[tuple[str, float, int]]:
        n_active = int(active.sum())

        def iou(mask: np.ndarray) -> float:
            union = n_active + int(mask.sum()) - int((mask & active).sum())
            return (mask & active).sum() / union if union else 0.0

        scored: dict[str, tuple[float, int, np.ndarray]] = {}
        for c, mask in present.items():
            scored[c] = (iou(mask), 1, mask)
        beam = sorted(scored, key=lambda f: (-scored[f][0], f))[: self.beam]
        seen = {fm.canonical(fm.parse(f)) for f in scored}
        for size in range(2, self.max_terms + 1):
            grown = {}
            for f in beam:
                parsed = fm.parse(f)
                used = set(fm.terms(parsed))
                for c in present:
                    if c in used:
                        continue
                    for op in self.ops:
                        new = (op.lower(), parsed, ("term", c))
                        key = fm.canonical(new)
                        if key in seen:
                            continue
                        seen.add(key)
                        text = fm.to_text(new)
                        mask = scored[f][2] & present[c] if op == "AND" else scored[f][2] | present[c]
                        grown[text] = (iou(mask), size, mask)
            scored.update(grown)
            beam = sorted(grown, key=lambda f: (-grown[f][0], f))[: self.beam]
        return sorted(((f, float(v[0]), v[1]) for f, v in scored.items()), key=lambda x: (-x[1], x[2], x[0]))

    def _choose(self, found: list[tuple[str, float, int]]) -> tuple[str, float]:
        """The best formula, where a longer one must beat every shorter one by `min_gain`."""
        best_f, best_iou = None, -1.0
        for size in range(1, self.max_terms + 1):
            cands = [x for x in found if x[2] == size]
            if not cands:
                continue
            f, v, _ = cands[0]
            if best_f is None or v > best_iou + self.min_gain:
                best_f, best_iou = f, v
        return best_f, best_iou

    def explain(self, index: NeuronIndex, layer: int, neuron: int, category: str | None = None) -> Explanation:
        """The concept formula that best matches the neuron (category from `index.categories()` unless given)."""
        category = category or _category(index, layer, neuron, self.category_rule)
        base = dict(layer=layer, neuron=neuron, category=category, model="concept", prompt_version=CONCEPT_VERSION, explainer=self.name)
        if category == "inactive":
            return Explanation(**base, text="inactive (never activates above 0)")
        modality = _modality(category)
        records, active, present = self._evidence(index, layer, neuron, modality)
        found = self._search(active, present)
        if not found:
            return Explanation(**base, text="no concept found", exemplars=[r.sample_id for r in records])
        formula, iou = self._choose(found)
        extra = {
            "iou": round(iou, 6),
            "threshold": self.threshold,
            "mask_threshold": self.mask_threshold,
            "modality": modality,
            "ranking": [[f, round(v, 6)] for f, v, _ in found[:5]],
        }
        return Explanation(**base, text=formula, concept=formula, exemplars=[r.sample_id for r in records], extra=extra)


def _modality(category: str) -> str:
    return {"visual": "image", "text": "text"}.get(category, "both")


class ConceptSimulator:
    """Simulate a concept explanation by painting its masks: 10 x the share of each patch the formula covers.

    `data` (a NeuronIndex, whose dataset is used, or a sequence of samples) holds the inputs'
    masks. On text, a token scores 10 where the formula holds for the token's own word. An
    explanation without a formula (written by hand, or by an LLM) is read as a formula when
    its terms are known (concept names; on text, also the input's words), else as the OR of
    the known words it mentions ("red patches" -> "red", 'the word "circle"' -> "circle").
    """

    name = "concept"

    def __init__(self, data: NeuronIndex | Sequence[Sample] | None = None) -> None:
        self.data = data
        self._masks = _MaskCache()

    def __repr__(self) -> str:
        return "<ConceptSimulator>"

    def formula(self, explanation: Explanation | str, vocabulary: Collection[str] | None = None) -> fm.Formula | None:
        """The formula to paint: the explanation's concept; else its text, read as a formula if every
        term is in `vocabulary`, else as the OR of the vocabulary's words it mentions (None: nothing)."""
        if isinstance(explanation, Explanation) and explanation.category == "inactive":
            return None  # its text ("inactive (never activates above 0)") names no concept: nothing is painted
        if isinstance(explanation, Explanation) and explanation.concept:
            return fm.parse(explanation.concept)
        text = explanation.text if isinstance(explanation, Explanation) else str(explanation)
        try:
            parsed = fm.parse(text)
            if vocabulary is None or all(t in vocabulary for t in fm.terms(parsed)):
                return parsed
        except ValueError:
            pass
        words = [fm.normalize(w) for w in text.replace("/", " ").split()]
        found = [w for w in dict.fromkeys(words) if w and w not in STOPWORDS and (vocabulary is None or w in vocabulary)]
        if not found:
            return None
        out: fm.Formula = ("term", found[0])
        for w in found[1:]:
            out = ("or", out, ("term", w))
        return out

    def simulate(self, explanation: Explanation | str, item: ActivationRecord | Sample, modality: str = "image", *,
                 sample: Sample | None = None,
                 grid: tuple[int, int] | None = None, tokens: list[str] | None = None) -> np.ndarray:
        """Painted 0-10 predictions on `item` (an ActivationRecord or a Sample): patches row-major, or tokens."""
        record = item if isinstance(item, ActivationRecord) else None
        cache = self._masks
        if sample is None:
            sample = item if record is None else (sample_of(self.data, record) if self.data is not None else None)
            if record is not None and self.data is not None:  # a sample of the simulator's dataset: its shared masks
                cache = masks_of(dataset_of(self.data), self._masks)
        if modality == "image":
            if sample is None:
                raise ValueError("ConceptSimulator needs the inputs' samples for their masks: pass ConceptSimulator(heldout)")
            if grid is None:
                if record is None:
                    raise ValueError("pass grid=(rows, cols) to simulate a sample without a record")
                grid = tuple(np.shape(record.patch_map))
            rows, cols = grid
            masks = cache.get(sample, rows, cols)
            f = self.formula(explanation, set(masks))
            if f is None:
                return np.zeros(rows * cols)
            zero = np.zeros(rows * cols)
            return 10.0 * np.clip(fm.evaluate(f, lambda c: masks.get(c, zero), soft=True), 0, 1)
        if modality == "text":
            if tokens is None:
                if record is None:
                    raise ValueError("pass tokens=[...] to simulate text without a record")
                tokens = list(record.text_tokens)
            words = np.asarray([fm.normalize(t) for t in tokens], dtype=object)
            masks = getattr(sample, "masks", None) or {}
            f = self.formula(explanation, {fm.normalize(k) for k in masks} | set(words))
            if f is None or not len(words):
                return np.zeros(len(words))
            return 10.0 * fm.evaluate(f, lambda c: (words == c), soft=False).astype(np.float64)
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
