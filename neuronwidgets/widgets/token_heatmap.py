"""TokenHeatmap: one neuron's activation on every token of one input."""

from __future__ import annotations

import traitlets as t

from neuronwidgets.widgets._base import NeuronWidget, f32, neuron_max, scale_for, token_fields


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

    def __init__(self, trace, layer: int, neuron: int, *, vmax: float | None = None, index=None, expanded: bool = False, **kwargs):
        self.trace = trace
        self.index = index
        self._fixed_vmax = vmax
        super().__init__(layer=int(layer), neuron=int(neuron), expanded=expanded, **self._state(trace, int(layer), int(neuron)), **kwargs)
        self.observe(self._redraw, names=["layer", "neuron"])

    def _state(self, trace, layer: int, neuron: int) -> dict:
        values = trace.neuron(layer, neuron)
        top = self._fixed_vmax if self._fixed_vmax is not None else neuron_max(self.index, layer, neuron)
        return {**token_fields(trace), "values": f32(values), "vmax": scale_for(values, top)}

    def _redraw(self, change=None) -> None:
        if not self._updating:
            self.update()

    def update(self, trace=None, layer: int | None = None, neuron: int | None = None) -> None:
        """Show another trace, layer or neuron; every changed trait goes in one message."""
        self.trace = trace if trace is not None else self.trace
        layer = self.layer if layer is None else int(layer)
        neuron = self.neuron if neuron is None else int(neuron)
        state = self._state(self.trace, layer, neuron)
        self._show(layer, neuron, state)
