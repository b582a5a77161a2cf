"""The explorer's simulated-vs-real panel: what the explanation predicts on the current input, beside the real values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from neuronwidgets.constants import CATEGORY_MODALITY, MODALITIES
from neuronwidgets.widgets._base import neuron_max
from neuronwidgets.widgets.simulation_plot import sim_state

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.explain.base import NeuronSimulator
    from neuronwidgets.explain.explanation import Explanation
    from neuronwidgets.model.trace import Trace
    from neuronwidgets.store.index import NeuronIndex

NO_SIMULATOR = "no simulator (pass simulator=...)"


def modalities_for(category: str | None) -> list[str]:
    """The modalities a neuron of `category` is simulated on: its own, or both."""
    own = CATEGORY_MODALITY.get(category or "")
    return [own] if own else list(MODALITIES)


def as_explanation(row: dict | None) -> Explanation | str | None:
    """An explanation row as an Explanation (its text alone where the row cannot be read)."""
    if row is None:
        return None
    try:
        from neuronwidgets.explain import Explanation

        return Explanation.from_row(row)
    except (ImportError, KeyError, ValueError, TypeError):  # the text is what simulators use
        return str(row.get("text") or "")


def sim_inputs(trace: Trace, layer: int, neuron: int, modalities: list[str], simulated: dict | None) -> list[dict]:
    """One chart input per modality: the real values and, when there, the simulated ones."""
    tok = trace.tokens
    text = tok.index[tok["modality"] == "text"].to_numpy()
    values = trace.neuron(layer, neuron)
    out = []
    for m in modalities:
        if m == "image":
            real, labels = trace.image_map(layer, neuron).ravel(), None
        else:
            real, labels = values[text], tok["token"].to_numpy()[text].tolist()
        sim = None if simulated is None else simulated.get(m)
        out.append({"label": "image patches" if m == "image" else "text tokens", "kind": m, "modality": m,
                    "real": real, "simulated": sim, "labels": labels})
    return out


def simulate(simulator: NeuronSimulator, row: dict | None, sample: Sample | None, trace: Trace,
             modalities: list[str]) -> dict[str, np.ndarray]:
    """The simulator's 0-10 predictions on this input, per modality."""
    exp = as_explanation(row)
    tok = trace.tokens
    tokens = tok.loc[tok["modality"] == "text", "token"].tolist()
    return {m: np.asarray(simulator.simulate(exp, sample, m, sample=sample, grid=tuple(trace.grid), tokens=tokens), np.float32).ravel()
            for m in modalities}


def sim_panel(simulator: NeuronSimulator | None, row: dict | None, sample: Sample | None, trace: Trace, layer: int, neuron: int,
              index: NeuronIndex | None, modalities: list[str], *, run: bool) -> tuple[dict, bool]:
    """(the sim panel, whether the simulation still has to run)."""
    real_max = neuron_max(index, layer, neuron)

    def panel(simulated, status):
        return sim_state(sim_inputs(trace, layer, neuron, modalities, simulated), grid=trace.grid, real_max=real_max, status=status)

    if simulator is None:
        return panel(None, NO_SIMULATOR), False
    if row is None:
        return panel(None, "no explanation for this neuron: nothing to simulate"), False
    if not run:
        return panel(None, "simulating\u2026"), True
    try:
        return panel(simulate(simulator, row, sample, trace, modalities), ""), False
    except Exception as err:  # a simulator is the user's code: say why it failed, keep the real values
        return panel(None, f"simulation unavailable: {type(err).__name__}: {err}"), False


def failed_panel(trace: Trace, layer: int, neuron: int, index: NeuronIndex | None, modalities: list[str], err: BaseException) -> dict:
    """The panel shown when a background simulation raised: never leave "simulating..." on screen."""
    return sim_state(sim_inputs(trace, layer, neuron, modalities, None), grid=trace.grid,
                     real_max=neuron_max(index, layer, neuron), status=f"simulation failed: {type(err).__name__}: {err}")
