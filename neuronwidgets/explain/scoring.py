"""score: how well an explanation predicts its neuron, beside a baseline explanation (another neuron's).

The score is the Pearson correlation between simulated and real activations over held-out
inputs, over all their values concatenated (not a mean of per-input correlations, as in
OpenAI's neuron-explainer): per patch for visual neurons, per token for text neurons, both
concatenated for multi-modal ones. It is reported for the top-activating inputs, for the
random inputs, and for both mixed 1:1 ("all", which is `result.score`). A simulator reply
that cannot be parsed is never scored as zeros: the input is left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from neuronwidgets.constants import MODALITIES
from neuronwidgets.explain.baseline import pick_baseline
from neuronwidgets.explain.data import dataset_of, is_index, sample_of
from neuronwidgets.explain.explanation import Explanation
from neuronwidgets.explain.simulator import SimulationParseError
from neuronwidgets.records import ActivationRecord
from neuronwidgets.store.identity import check_same_neurons

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from neuronwidgets.explain.base import NeuronExplainer, NeuronSimulator
    from neuronwidgets.store.index import NeuronIndex

KINDS = ("top", "random", "all")


def pearson(a: ArrayLike, b: ArrayLike) -> float:
    """Pearson correlation; NaN when there are fewer than two values or either side is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"cannot correlate {a.size} with {b.size} values")
    finite = np.isfinite(a) & np.isfinite(b)  # one inf (an fp16 overflow) must not void the whole score
    if not finite.all():
        a, b = a[finite], b[finite]
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


@dataclass
class ScoreResult:
    """An explanation's score, its baseline's, per kind of input, and the per-input values behind them."""

    score: float
    baseline: float
    scores: dict[str, float]
    baseline_scores: dict[str, float]
    modality: str  # "image" (per patch), "text" (per token) or "both" (patches and tokens concatenated)
    per_input: pd.DataFrame
    baseline_per_input: pd.DataFrame
    n_unparsed: int
    baseline_n_unparsed: int
    explanation: Explanation
    baseline_explanation: Explanation | None
    simulator: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The numbers without the per-input values (JSON-able)."""
        b = self.baseline_explanation
        return {
            "layer": self.explanation.layer,
            "neuron": self.explanation.neuron,
            "explanation": self.explanation.text,
            "score": self.score,
            **{f"score_{k}": v for k, v in self.scores.items()},
            "baseline": self.baseline,
            **{f"baseline_{k}": v for k, v in self.baseline_scores.items()},
            "baseline_layer": b.layer if b else None,
            "baseline_neuron": b.neuron if b else None,
            "baseline_text": b.text if b else None,
            "modality": self.modality,
            "n_inputs": int(self.per_input["sample"].nunique()) if len(self.per_input) else 0,
            "n_unparsed": self.n_unparsed,
            "baseline_n_unparsed": self.baseline_n_unparsed,
            "simulator": self.simulator,
        }

    def __repr__(self) -> str:
        b = f"{self.baseline:.3f}" if self.baseline_explanation is not None else "none"
        s = ", ".join(f"{k} {v:.3f}" for k, v in self.scores.items())
        unparsed = f", {self.n_unparsed} unparsed" if self.n_unparsed else ""
        return f"<ScoreResult {self.score:.3f} (baseline {b}; {s}) over {self.modality}{unparsed}: {self.explanation.text!r}>"


# --- the held-out inputs ---------------------------------------------------------------------
class NoHeldOutRecords(ValueError):
    """The explainer read every record of the neuron in the index: none is left to score on."""


def _holdout_inputs(explanation: Explanation, index_or_inputs, holdout, n_top: int | None, n_random: int | None):
    """(records, where their samples are) for scoring."""
    L, N = explanation.layer, explanation.neuron
    if holdout is not None and is_index(holdout):
        if is_index(index_or_inputs):
            check_same_neurons(index_or_inputs, holdout, "the index and the held-out index")
        top = holdout.records(L, N, "top")[:n_top]
        random = holdout.records(L, N, "random")[:n_random]
        return top + random, holdout
    source = index_or_inputs if is_index(index_or_inputs) else None
    if holdout is not None:
        records, source = list(holdout), None  # their samples: the simulator's own data
    elif source is not None:
        used = set(explanation.exemplars)
        top = [r for r in source.records(L, N, "top") if r.sample_id not in used][:n_top]
        random = [r for r in source.records(L, N, "random") if r.sample_id not in used][:n_random]
        records = top + random
        if not records:
            raise NoHeldOutRecords(
                "every record of this neuron in the index was shown to the explainer, so none is held out: "
                "pass holdout= (a NeuronIndex collected over other samples, or a list of ActivationRecords)"
            )
    else:
        records = list(index_or_inputs)
    if not all(isinstance(r, ActivationRecord) for r in records):
        raise TypeError("held-out inputs must be ActivationRecords (real activations are needed to score against)")
    odd = sorted({r.kind for r in records} - {"top", "random"})
    if odd:
        raise ValueError(f"held-out records must be of kind 'top' or 'random', got {odd}")
    top = [r for r in records if r.kind == "top"][:n_top]
    random = [r for r in records if r.kind == "random"][:n_random]
    return top + random, source


def _mixed(records: list[ActivationRecord]) -> set[int]:
    """Positions of the records in the 1:1 mix of top and random inputs (all of them when one kind is missing)."""
    top = [i for i, r in enumerate(records) if r.kind == "top"]
    rnd = [i for i, r in enumerate(records) if r.kind == "random"]
    if not top or not rnd:
        return set(range(len(records)))
    n = min(len(top), len(rnd))
    return set(top[:n] + rnd[:n])


def _simulate_all(explanation, records, modalities, simulator, source, workers: int) -> pd.DataFrame:
    has_data = source is not None and dataset_of(source) is not None

    def one(i_rec):
        i, rec = i_rec
        sample = sample_of(source, rec) if has_data else None
        rows = []
        for m in modalities:
            real = rec.values(m).astype(np.float64)
            if m == "text" and real.size == 0:
                continue
            sim, err = None, None
            try:
                sim = np.asarray(simulator.simulate(explanation, rec, m, sample=sample), np.float64).ravel()
            except SimulationParseError as e:
                err = str(e)
            if sim is not None and sim.shape != real.shape:
                raise ValueError(f"simulator {type(simulator).__name__} gave {sim.size} values for {real.size} {m} values "
                                 f"of sample {rec.sample_id!r}")
            rows.append({"position": i, "sample": rec.sample, "sample_id": rec.sample_id, "kind": rec.kind, "modality": m,
                         "real": real, "simulated": sim, "corr": pearson(real, sim) if sim is not None else float("nan"), "error": err,
                         "tokens": list(rec.text_tokens) if m == "text" else None})
        return rows

    items = list(enumerate(records))
    if workers > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, items))
    else:
        results = [one(x) for x in items]
    df = pd.DataFrame([row for rows in results for row in rows],
                      columns=["position", "sample", "sample_id", "kind", "modality", "real", "simulated", "corr", "error", "tokens"])
    mixed = _mixed(records)
    df["mixed"] = df["position"].isin(mixed)
    return df.drop(columns="position")


def _scores(df: pd.DataFrame) -> tuple[dict[str, float], int]:
    ok = df[df["simulated"].notna()] if len(df) else df
    out = {}
    for kind in KINDS:
        part = ok[ok["mixed"]] if kind == "all" else ok[ok["kind"] == kind]
        if len(part) == 0:
            out[kind] = float("nan")
            continue
        out[kind] = pearson(np.concatenate(list(part["real"])), np.concatenate(list(part["simulated"])))
    return out, int(df["simulated"].isna().sum()) if len(df) else 0


def score(explanation: Explanation, index_or_inputs: NeuronIndex | Sequence[ActivationRecord], simulator: NeuronSimulator,
          holdout: NeuronIndex | Sequence[ActivationRecord] | None = None, *, baseline: Explanation | bool | None = None,
          explainer: NeuronExplainer | None = None, baseline_table: pd.DataFrame | None = None, modality: str | None = None,
          n_top: int | None = 20, n_random: int | None = 20, workers: int | None = None) -> ScoreResult:
    """Score `explanation` by simulating its neuron on held-out inputs, beside a baseline explanation.

    index_or_inputs: the NeuronIndex the explanation came from (used to find a baseline, and
        for held-out records when `holdout` is None: the records the explainer did not see),
        or a list of ActivationRecords to score on.
    holdout: a NeuronIndex collected over other samples (its top and random records of the
        neuron), or a list of ActivationRecords.
    baseline: an Explanation to score beside; None picks another neuron's (see
        `neuronwidgets.explain.baseline.pick_baseline`: from `baseline_table` or the index
        folder's explanations table, else explained now by `explainer`); False scores none.
    modality: 'image', 'text' or 'both' (default: from the explanation's category).
    n_top, n_random: at most this many top-activating / random held-out inputs.
    workers: simulations in flight at once (default: the simulator's client's max_concurrency, else 1).
    """
    modality = modality or explanation.modality
    if modality not in (*MODALITIES, "both"):
        raise ValueError(f"modality must be 'image', 'text' or 'both', got {modality!r}")
    modalities = MODALITIES if modality == "both" else (modality,)
    records, source = _holdout_inputs(explanation, index_or_inputs, holdout, n_top, n_random)
    if not records:
        raise ValueError(f"no held-out inputs for layer {explanation.layer} neuron {explanation.neuron}")
    if workers is None:
        workers = getattr(getattr(simulator, "client", None), "max_concurrency", 1)
    notes = []
    if baseline is None:
        index = index_or_inputs if is_index(index_or_inputs) else None
        baseline, note = pick_baseline(explanation, index, explainer=explainer, simulator=simulator, table=baseline_table)
        if note:
            notes.append(note)
    elif baseline is False:
        baseline = None
    per_input = _simulate_all(explanation, records, modalities, simulator, source, workers)
    scores, n_unparsed = _scores(per_input)
    if baseline is not None:
        base_df = _simulate_all(baseline, records, modalities, simulator, source, workers)
        base_scores, base_unparsed = _scores(base_df)
    else:
        base_df = per_input.iloc[0:0].copy()
        base_scores, base_unparsed = {k: float("nan") for k in KINDS}, 0
    return ScoreResult(
        score=scores["all"],
        baseline=base_scores["all"],
        scores=scores,
        baseline_scores=base_scores,
        modality=modality,
        per_input=per_input,
        baseline_per_input=base_df,
        n_unparsed=n_unparsed,
        baseline_n_unparsed=base_unparsed,
        explanation=explanation,
        baseline_explanation=baseline,
        simulator=getattr(simulator, "name", type(simulator).__name__),
        notes=notes,
    )
