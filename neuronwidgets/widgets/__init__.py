"""Jupyter widgets for looking at neurons: anywidget classes whose front-ends are plain ES
modules in neuronwidgets/js (no build step, no CDN). Arrays travel as binary buffers; every
string from a model, a file or an LLM is shown as text. `widget.to_html(path)` writes one
self-contained page that renders offline.
"""

from neuronwidgets.widgets.card import ExplanationCard
from neuronwidgets.widgets.explorer import NeuronExplorer
from neuronwidgets.widgets.export import to_html
from neuronwidgets.widgets.patch_heatmap import PatchHeatmap
from neuronwidgets.widgets.simulation_plot import SimulationPlot
from neuronwidgets.widgets.token_heatmap import TokenHeatmap

__all__ = ["ExplanationCard", "NeuronExplorer", "PatchHeatmap", "SimulationPlot", "TokenHeatmap", "to_html"]
