"""TokenHeatmap: one neuron's activation on every token of one input."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import traitlets as t

from neuronwidgets.checks import whole_number
from neuronwidgets.store.identity import check_same_neurons
from neuronwidgets.widgets._base import (
    NeuronWidget,
    check_trace_place,
    f32,
    neuron_max,
    scale_for,
    token_fields,
)

if TYPE_CHECKING:
    from neuronwidgets.model.trace import Trace
    from neuronwidgets.store.index import NeuronIndex


class TokenHeatmap(NeuronWidget):
    """Tokens coloured by one neuron (red above zero, blue below), the value on hover; the
    image's tokens collapse into one chip that expands into the patch grid.

    >>> nw.TokenHeatmap(trace, layer=3, neuron=117)

    Colours follow the 0-10 scale of `records.discretize`, relative to `vmax`: the neuron's
    max over a dataset when `index` (a NeuronIndex) or `vmax` is given, else the largest
    value in this trace. Changing `layer` or `neuron` redraws from the same trace.
    """

    _entry = "token_heatmap.js"

    _sync_together = ("layer", "neuron")

    layer = t.Int().tag(sync=True)
    neuron = t.Int().tag(sync=True)
    tokens = t.List(t.Unicode()).tag(sync=True)
    patch = t.Bytes().tag(sync=True)  # int32 [tokens]: patch index (row * cols + col), -1 for text
    values = t.Bytes().tag(sync=True)  # float32 [tokens]
    vmax = t.Float(1.0).tag(sync=True)
    grid = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)
    image_token = t.Unicode("<image>").tag(sync=True)
    expanded = t.Bool(False).tag(sync=True)

    def __init__(self, trace: Trace, layer: int, neuron: int, *, vmax: float | None = None, index: NeuronIndex | None = None,
                 expanded: bool = False, **kwargs: Any) -> None:
        self.index = index
        self.trace = self._checked(trace)
        self._fixed_vmax = vmax
        layer, neuron = whole_number(layer, "layer"), whole_number(neuron, "neuron")
        super().__init__(layer=layer, neuron=neuron, expanded=expanded, **self._state(trace, layer, neuron), **kwargs)
        self.observe(self._redraw, names=["layer", "neuron"])

    @t.validate("layer", "neuron")
    def _valid_place(self, proposal):
        return check_trace_place(self.trace, proposal["trait"].name, proposal["value"])

    def _state(self, trace, layer: int, neuron: int) -> dict:
        values = trace.neuron(layer, neuron)
        top = self._fixed_vmax if self._fixed_vmax is not None else neuron_max(self.index, layer, neuron)
        return {**token_fields(trace), "values": f32(values), "vmax": scale_for(values, top)}

    def _redraw(self, change=None) -> None:
        if not self._updating:
            self.update()

    def update(self, trace: Trace | None = None, layer: int | None = None, neuron: int | None = None) -> None:
        """Show another trace, layer or neuron; every changed trait goes in one message."""
        trace = self.trace if trace is None or trace is self.trace else self._checked(trace)
        layer = self.layer if layer is None else whole_number(layer, "layer")
        neuron = self.neuron if neuron is None else whole_number(neuron, "neuron")
        state = self._state(trace, layer, neuron)
        self.trace = trace  # only now: a bad layer or neuron above leaves the widget as it was
        self._show(layer, neuron, state)

    def _checked(self, trace):
        if self.index is not None:
            check_same_neurons(trace, self.index, "the trace and the index")
        return trace
