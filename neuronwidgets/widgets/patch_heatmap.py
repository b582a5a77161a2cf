"""PatchHeatmap: one neuron over the image's patch grid; a click on a patch lists its top neurons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import traitlets as t

from neuronwidgets.checks import whole_number
from neuronwidgets.store.identity import check_same_neurons
from neuronwidgets.widgets._base import (
    NeuronWidget,
    check_trace_place,
    f32,
    neuron_max,
    patch_top,
    png,
    scale_for,
)
from neuronwidgets.widgets.colors import CMAPS

if TYPE_CHECKING:
    from neuronwidgets.model.trace import Trace
    from neuronwidgets.store.index import NeuronIndex


class PatchHeatmap(NeuronWidget):
    """The image with its patch grid coloured by one neuron's activation, the value on hover.

    >>> w = nw.PatchHeatmap(trace, layer=3, neuron=117, cmap="reveal", opacity=0.8)
    >>> w.selected = 5          # or click patch 5 in the browser
    >>> w.top_neurons()         # that patch's most active neurons in the layer

    `cmap`: "diverging" (red above zero, blue below), "reveal" (the paper's overlay: the
    image shows through where the neuron fires, white elsewhere) or "viridis". The `k` most
    active neurons of every patch are sent with the image, so a click needs no round trip
    (and works in a static export).
    """

    _entry = "patch_heatmap.js"

    _sync_together = ("layer", "neuron")

    layer = t.Int().tag(sync=True)
    neuron = t.Int().tag(sync=True)
    image = t.Bytes().tag(sync=True)  # PNG: the square crop the patch grid covers
    values = t.Bytes().tag(sync=True)  # float32 [rows * cols], row-major
    grid = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)
    vmax = t.Float(1.0).tag(sync=True)
    cmap = t.Enum(CMAPS, default_value="diverging").tag(sync=True)
    opacity = t.Float(0.6).tag(sync=True)
    selected = t.Int(-1).tag(sync=True)  # patch index, -1 for none
    top_ids = t.Bytes().tag(sync=True)  # int32 [rows * cols, k]
    top_values = t.Bytes().tag(sync=True)  # float32 [rows * cols, k]
    k = t.Int(8).tag(sync=True)

    def __init__(self, trace: Trace, layer: int, neuron: int, *, vmax: float | None = None, index: NeuronIndex | None = None, k: int = 8,
                 cmap: str = "diverging", opacity: float = 0.6, **kwargs: Any) -> None:
        self.index = index
        self.trace = self._checked(trace)
        self._fixed_vmax = vmax
        self._k = int(k)
        layer, neuron = whole_number(layer, "layer"), whole_number(neuron, "neuron")
        super().__init__(layer=layer, neuron=neuron, cmap=cmap, opacity=opacity, image=png(trace.image, crop=getattr(trace, "crop", True)),
                         **self._state(trace, layer, neuron, layer_changed=True), **kwargs)
        self.observe(self._redraw, names=["layer", "neuron"])

    @t.validate("layer", "neuron")
    def _valid_place(self, proposal):
        return check_trace_place(self.trace, proposal["trait"].name, proposal["value"])

    @t.validate("selected")
    def _valid_selected(self, proposal):
        rows, cols = self.trace.grid
        if not -1 <= proposal["value"] < rows * cols:
            raise t.TraitError(f"selected must be a patch number 0..{rows * cols - 1}, or -1 for none; got {proposal['value']}")
        return proposal["value"]

    @t.validate("opacity")
    def _valid_opacity(self, proposal):
        return float(min(1.0, max(0.0, proposal["value"])))

    def _state(self, trace, layer: int, neuron: int, layer_changed: bool) -> dict:
        values = trace.image_map(layer, neuron).ravel()
        top = self._fixed_vmax if self._fixed_vmax is not None else neuron_max(self.index, layer, neuron)
        state = {"values": f32(values), "vmax": scale_for(values, top), "grid": [int(g) for g in trace.grid]}
        if layer_changed:
            state["top_ids"], state["top_values"], state["k"] = patch_top(trace, layer, self._k)
        return state

    def _redraw(self, change) -> None:
        if not self._updating:
            self.update(layer=self.layer, neuron=self.neuron, _layer_changed=change["name"] == "layer")

    def update(self, trace: Trace | None = None, layer: int | None = None, neuron: int | None = None, *,
               _layer_changed: bool = True) -> None:
        """Show another trace, layer or neuron; every changed trait goes in one message."""
        new_trace = trace is not None and trace is not self.trace
        trace = self._checked(trace) if new_trace else self.trace
        layer = self.layer if layer is None else whole_number(layer, "layer")
        neuron = self.neuron if neuron is None else whole_number(neuron, "neuron")
        state = self._state(trace, layer, neuron, layer_changed=_layer_changed or new_trace or layer != self.layer)
        if new_trace:
            state["image"] = png(trace.image, crop=getattr(trace, "crop", True))
            if self.selected >= trace.grid[0] * trace.grid[1]:
                state["selected"] = -1
        self.trace = trace  # only now: a bad layer or neuron above leaves the widget as it was
        self._show(layer, neuron, state)

    def _checked(self, trace):
        if trace.image is None:
            raise ValueError("this trace has no image; PatchHeatmap needs the image the trace was run on")
        if self.index is not None:
            check_same_neurons(trace, self.index, "the trace and the index")
        return trace

    # --- what a click selects ----------------------------------------------------------------
    @property
    def selected_patch(self) -> tuple[int, int] | None:
        """(row, col) of the selected patch, or None."""
        if self.selected < 0:
            return None
        cols = self.grid[1]
        return divmod(self.selected, cols)

    def top_neurons(self, k: int | None = None) -> pd.DataFrame:
        """The selected patch's most active neurons in this layer: layer, neuron, activation (best first)."""
        if self.selected < 0:
            return pd.DataFrame({"layer": pd.Series(dtype=int), "neuron": pd.Series(dtype=int), "activation": pd.Series(dtype=np.float32)})
        row, col = self.selected_patch
        tok = self.trace.tokens
        pos = tok.index[(tok["modality"] == "image") & (tok["row"] == row) & (tok["col"] == col)]
        return self.trace.top_neurons(self.layer, int(pos[0]), k=k or self.k)
