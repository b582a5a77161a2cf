"""The baseline explanation a score is shown beside: another neuron's explanation, picked deterministically.

Where it comes from, first that applies:
1. the explanations table in the index folder (written by `explain_all`): another explained
   neuron of the same layer;
2. otherwise another neuron of the same layer is explained now, by `explainer` if given,
   else by a `ConceptExplainer` (on the index's dataset) for concept explanations or a
   concept simulator, else by an LLM `Explainer` on the simulator's client.
Candidates are other neurons of the same layer, preferring the same category, in an order
fixed by (layer, neuron). A candidate that says the same thing as the scored explanation
(the same text; a concept it names; for free text, a content word it uses) is passed over
while another can be found: a baseline that says the same thing measures nothing.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from neuronwidgets.explain import formula as fm
from neuronwidgets.explain.data import categories
from neuronwidgets.explain.explanation import Explanation

if TYPE_CHECKING:
    from neuronwidgets.explain.base import NeuronExplainer, NeuronSimulator
    from neuronwidgets.store.index import NeuronIndex


def _terms(exp: Explanation) -> set[str]:
    """The concepts an explanation names: its formula's terms, else the words of its text."""
    from neuronwidgets.explain.concept import STOPWORDS

    if exp.concept:
        try:
            return set(fm.terms(fm.parse(exp.concept)))
        except ValueError:
            pass
    return {w for w in (fm.normalize(x) for x in exp.text.split()) if w and w not in STOPWORDS}


def _fit(candidate: Explanation, explanation: Explanation) -> int:
    """2: a good baseline; 1: different words only; 0: says the same (or nothing)."""
    text = candidate.text.strip().lower()
    empty = candidate.category == "inactive" or (candidate.explainer == "concept" and not candidate.concept)
    if not text or empty or text == explanation.text.strip().lower():
        return 0
    return 2 if not (_terms(candidate) & _terms(explanation)) else 1


def candidate_order(index: NeuronIndex, layer: int, neuron: int, category: str | None, allowed: Container[int] | None = None) -> list[int]:
    """Other neurons of `layer`: same category first, each group in an order fixed by (layer, neuron); inactive ones left out."""
    try:
        table = categories(index)
        table = table[(table["layer"] == layer) & (table["neuron"] != neuron) & (table["category"] != "inactive")]
        same = table.loc[table["category"] == category, "neuron"].to_numpy()
        other = table.loc[table["category"] != category, "neuron"].to_numpy()
    except (AttributeError, ImportError, NotImplementedError):
        same, other = np.asarray([n for n in range(index.n_neurons) if n != neuron]), np.zeros(0, int)
    rng = np.random.default_rng([int(layer), int(neuron), 7])
    order = [int(n) for group in (same, other) for n in rng.permutation(np.sort(group))]
    if allowed is not None:
        order = [n for n in order if n in allowed]
    return order


def _first_fit(explanation: Explanation, candidates) -> Explanation | None:
    """The first candidate that fits fully (stops asking there), else the first that fits partly."""
    best = None
    for cand in candidates:
        fit = _fit(cand, explanation)
        if fit == 2:
            return cand
        if fit == 1 and best is None:
            best = cand
    return best


def pick_baseline(explanation: Explanation, index: NeuronIndex | None, *, explainer: NeuronExplainer | None = None,
                  simulator: NeuronSimulator | None = None, table: pd.DataFrame | None = None,
                  max_tries: int = 8) -> tuple[Explanation | None, str]:
    """(another neuron's explanation, a note on how it was found) — or (None, why not).

    `table`: explanations to pick from (default: the index folder's explanations table).
    """
    if index is None:
        return None, "no baseline: scoring on a list of records gives no other neuron to take one from; pass baseline="
    L, N = explanation.layer, explanation.neuron
    if table is None and hasattr(index, "explanations"):
        table = index.explanations()
    if table is not None and len(table) and explainer is None:
        rows = table[(table["layer"] == L) & (table["neuron"] != N)]
        if "error" in rows:
            rows = rows[rows["error"].isna()]
        same_kind = rows[rows["explainer"] == explanation.explainer]
        rows = same_kind if len(same_kind) else rows
        by_neuron = {int(r["neuron"]): r for r in rows.to_dict("records")}
        order = candidate_order(index, L, N, explanation.category, allowed=set(by_neuron))
        best = _first_fit(explanation, (Explanation.from_row(by_neuron[n]) for n in order))
        if best is not None:
            return best, f"baseline: layer {L} neuron {best.neuron} from the index's explanations table"
    if explainer is None:
        from neuronwidgets.explain.concept import ConceptExplainer, ConceptSimulator

        if explanation.explainer == "concept" or isinstance(simulator, ConceptSimulator):
            explainer = ConceptExplainer()
        elif getattr(simulator, "client", None) is not None:
            from neuronwidgets.explain.explainer import Explainer

            explainer = Explainer(simulator.client)
        else:
            return None, "no baseline: pass baseline= or explainer= (no explanations table in the index folder)"
    order = candidate_order(index, L, N, explanation.category)[:max_tries]
    best = _first_fit(explanation, (explainer.explain(index, L, n) for n in order))
    if best is not None:
        return best, f"baseline: layer {L} neuron {best.neuron} explained by {type(explainer).__name__}"
    return None, f"no baseline: none of {max_tries} other neurons of layer {L} has a different explanation"
