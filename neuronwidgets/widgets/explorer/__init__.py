"""The NeuronExplorer dashboard: sources (what it shows), panels, simulation, export, and the widget itself."""

from __future__ import annotations

from neuronwidgets.widgets.explorer.widget import NeuronExplorer

__all__ = ["NeuronExplorer"]
