"""SimulationPlot: simulated against real activations (altair), per patch or token and as a scatter."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import traitlets as t

from neuronwidgets.explain.scoring import pearson as scoring_pearson
from neuronwidgets.widgets._base import NeuronWidget, f32, finite, i32

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from neuronwidgets.explain.scoring import ScoreResult

POINTS, FOCUS = "points", "focus"


@functools.lru_cache(maxsize=1)
def _spec() -> dict:
    import altair as alt

    series = alt.Color("series:N", title=None, scale=alt.Scale(domain=["real (0-10 scale)", "simulated"], range=["#d6604d", "#4393c3"]),
                       legend=alt.Legend(orient="bottom"))
    per_position = (
        alt.Chart(alt.Data(name=FOCUS))
        .mark_line(point=True)
        .encode(
            x=alt.X("i:Q", title="patch / token", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("value:Q", title="activation (0-10)", scale=alt.Scale(zero=True)),
            color=series,
            opacity=alt.condition("datum.ghost", alt.value(0), alt.value(1)),
            tooltip=[alt.Tooltip("label:N", title="at"), alt.Tooltip("series:N"), alt.Tooltip("raw:N", title="value")],
        )
        .properties(width=320, height=180, title="per patch or token")
    )
    scatter = (
        alt.Chart(alt.Data(name=POINTS))
        .mark_circle(size=40)
        .encode(
            # The front-end never hands vega an empty data set (infinite extents break the
            # concat layout): while nothing is simulated it sends invisible "ghost" rows.
            opacity=alt.condition("datum.ghost", alt.value(0), alt.value(0.6)),
            x=alt.X("real:Q", title="real activation"),
            y=alt.Y("simulated:Q", title="simulated (0-10)", scale=alt.Scale(domain=[0, 10])),
            color=alt.Color("kind:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=[alt.Tooltip("input:N"), alt.Tooltip("label:N", title="at"), alt.Tooltip("real:Q", format=".3f"),
                     alt.Tooltip("simulated:Q", format=".2f")],
        )
        .properties(width=220, height=180, title="all values")
    )
    chart = alt.hconcat(per_position, scatter).resolve_scale(color="independent").configure_view(stroke=None)
    return chart.to_dict()


def chart_spec() -> dict:
    """The vega-lite spec (built with altair once per process; data arrives separately as binary arrays)."""
    return copy.deepcopy(_spec())


def pearson(a: ArrayLike, b: ArrayLike) -> float | None:
    """The score's Pearson correlation (non-finite pairs left out), None where it is undefined."""
    return finite(scoring_pearson(a, b))


def sim_state(inputs: list[dict[str, Any]], *, grid: Sequence[int] | None = None,
              real_max: float | None = None, status: str = "") -> dict[str, Any]:
    """The plot's data from a list of inputs: {label, kind, modality, real, simulated (or None), labels?}."""
    real, sim, group, labels, meta = [], [], [], [], []
    have_labels = any(inp.get("labels") is not None for inp in inputs)
    for g, inp in enumerate(inputs):
        r = np.asarray(inp["real"], np.float32).ravel()
        s = inp.get("simulated")
        s = np.full(r.shape, np.nan, np.float32) if s is None else np.asarray(s, np.float32).ravel()
        if s.shape != r.shape:
            raise ValueError(f"input {inp.get('label')!r}: {s.size} simulated values for {r.size} real ones")
        real.append(r)
        sim.append(s)
        group.append(np.full(r.size, g, np.int32))
        if have_labels:
            lab = inp.get("labels")
            labels.extend([str(x) for x in lab] if lab is not None else [None] * r.size)
        meta.append({"label": str(inp.get("label", f"input {g}")), "kind": str(inp.get("kind") or inp.get("modality") or "input"),
                     "modality": str(inp.get("modality", "text")), "corr": pearson(r, s)})
    real_all = np.concatenate(real) if real else np.zeros(0, np.float32)
    sim_all = np.concatenate(sim) if sim else np.zeros(0, np.float32)
    n = int((np.isfinite(sim_all) & np.isfinite(real_all)).sum())  # the pairs the correlation reads
    if grid is None:
        sizes = {int(x.size) for x, m in zip(real, meta) if m["modality"] == "image"}
        side = int(round(math.sqrt(next(iter(sizes))))) if len(sizes) == 1 else 0
        grid = [side, side] if side and side * side in sizes else [0, 0]
    top = finite(real_max)
    if top is None or top <= 0:
        finite_real = real_all[np.isfinite(real_all)]
        top = float(finite_real.max()) if finite_real.size and finite_real.max() > 0 else 1.0  # (all NaN: no warning)
    return {
        "real": f32(real_all),
        "simulated": f32(sim_all),
        "group": i32(np.concatenate(group) if group else np.zeros(0, np.int32)),
        "inputs": meta,
        "labels": labels,
        "corr": pearson(real_all, sim_all),
        "n": n,
        "grid": [int(g) for g in grid],
        "real_max": top,
        "status": status,
    }


def inputs_from_result(result: ScoreResult) -> list[dict[str, Any]]:
    """The plot's inputs from a ScoreResult's per_input table (rows the simulator could not answer are left out)."""
    df = result.per_input
    out = []
    for row in df.itertuples(index=False):
        if row.simulated is None or (isinstance(row.simulated, float) and math.isnan(row.simulated)):
            continue
        tokens = getattr(row, "tokens", None)  # text inputs: each value's token, shown on hover
        out.append({"label": f"{row.sample_id} ({row.kind})", "kind": str(row.kind), "modality": str(row.modality),
                    "real": row.real, "simulated": row.simulated,
                    "labels": list(tokens) if tokens is not None and str(row.modality) == "text" else None})
    return out


class SimulationPlot(NeuronWidget):
    """Simulated against real activations: per patch or token for one input (pick it in the
    plot) and all values as a scatter, with the Pearson correlation over all of them.

    >>> nw.SimulationPlot(result)                                  # a ScoreResult
    >>> plot = nw.SimulationPlot.from_arrays(real, simulated, labels=tokens)
    >>> plot.update(real=new_real, simulated=new_sim)              # redrawn, one message

    Drawn with altair/vega-lite (`chart_spec()`), offline: vega comes from vl-convert-python.
    """

    _entry = "simulation_plot.js"

    title = t.Unicode("").tag(sync=True)
    real = t.Bytes().tag(sync=True)  # float32 [points]
    simulated = t.Bytes().tag(sync=True)  # float32 [points], NaN where not simulated
    group = t.Bytes().tag(sync=True)  # int32 [points]: which input
    inputs = t.List(t.Dict()).tag(sync=True)
    labels = t.List().tag(sync=True)  # per point (tokens), or empty
    corr = t.Float(None, allow_none=True).tag(sync=True)
    n = t.Int(0).tag(sync=True)
    grid = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)
    real_max = t.Float(1.0).tag(sync=True)
    focus = t.Int(0).tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    spec = t.Dict().tag(sync=True)

    def __init__(self, result: ScoreResult | None = None, *, inputs: list[dict] | None = None, grid: Sequence[int] | None = None,
                 real_max: float | None = None, title: str | None = None, **kwargs: Any) -> None:
        self.result = result
        state = self._state(result, inputs, grid, real_max, title)
        super().__init__(spec=chart_spec(), **state, **kwargs)

    @classmethod
    def from_arrays(cls, real: ArrayLike, simulated: ArrayLike | None, *, labels: Sequence[str] | None = None, modality: str = "text",
                    label: str = "input", grid: Sequence[int] | None = None, real_max: float | None = None,
                    title: str = "") -> SimulationPlot:
        """One input's real and simulated values (patches row-major, or tokens with `labels`)."""
        return cls(inputs=[{"label": label, "kind": "", "modality": modality, "real": real, "simulated": simulated, "labels": labels}],
                   grid=grid, real_max=real_max, title=title)

    @staticmethod
    def _state(result, inputs, grid, real_max, title) -> dict:
        if result is not None:
            inputs = inputs_from_result(result)
            exp = result.explanation
            if title is None:
                base = f" vs baseline {result.baseline:.2f}" if finite(result.baseline) is not None else ""
                score = f"{result.score:.2f}" if finite(result.score) is not None else "n/a"
                title = f"layer {exp.layer} neuron {exp.neuron}: score {score}{base} \u2014 {exp.text}"
        state = sim_state(inputs or [], grid=grid, real_max=real_max)
        state["title"] = title or ""
        if result is not None and getattr(result, "n_unparsed", 0):
            state["status"] = f"{result.n_unparsed} simulator replies could not be parsed (left out)"
        return state

    def update(self, result: ScoreResult | None = None, *, inputs: list[dict] | None = None, real: ArrayLike | None = None,
               simulated: ArrayLike | None = None, labels: Sequence[str] | None = None, modality: str = "text",
               grid: Sequence[int] | None = None, real_max: float | None = None, title: str | None = None) -> None:
        """Redraw with new values (a ScoreResult, inputs, or one input's arrays); one message."""
        if real is not None:
            inputs = [{"label": "input", "kind": "", "modality": modality, "real": real, "simulated": simulated, "labels": labels}]
        self.result = result
        state = self._state(result, inputs, grid, real_max, title if title is not None else (None if result is not None else self.title))
        state["focus"] = min(self.focus, max(0, len(state["inputs"]) - 1))
        with self.hold_sync():
            for key, value in state.items():
                setattr(self, key, value)
