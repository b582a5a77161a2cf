"""neuronwidgets: record, sort, explain and show the MLP neurons of vision-language models.

    import neuronwidgets as nw
    session = nw.Session.toy()
    trace = session.trace(image, "USER: <image>\\nWhat is the red shape? ASSISTANT:")
    nw.PatchHeatmap(trace, layer=1, neuron=42)

Widgets, explanations and the LLM client are imported on first use, so batch jobs on a
GPU machine need neither a Jupyter stack nor the `openai` package.
"""

from __future__ import annotations

import importlib

from neuronwidgets import datasets
from neuronwidgets.model.session import Session
from neuronwidgets.model.trace import Trace
from neuronwidgets.records import ActivationRecord, discretize
from neuronwidgets.store.index import NeuronIndex
from neuronwidgets.store.layout import IndexFormatError

__version__ = "0.1.0"

_LAZY = {
    # explanations, simulation and scoring
    "Explanation": "neuronwidgets.explain",
    "Explainer": "neuronwidgets.explain",
    "Simulator": "neuronwidgets.explain",
    "ConceptExplainer": "neuronwidgets.explain",
    "ConceptSimulator": "neuronwidgets.explain",
    "score": "neuronwidgets.explain",
    "ScoreResult": "neuronwidgets.explain",
    "explain_all": "neuronwidgets.explain",
    # widgets
    "TokenHeatmap": "neuronwidgets.widgets",
    "PatchHeatmap": "neuronwidgets.widgets",
    "ExplanationCard": "neuronwidgets.widgets",
    "SimulationPlot": "neuronwidgets.widgets",
    "NeuronExplorer": "neuronwidgets.widgets",
    "to_html": "neuronwidgets.widgets",
    # LM-head decoding of neurons, causal scores, clamping (issue 25)
    "decode_neurons": "neuronwidgets.decode",
    "NeuronDecoding": "neuronwidgets.decode",
    "load_decoding": "neuronwidgets.decode",
    "causal_score": "neuronwidgets.decode",
    "clamp": "neuronwidgets.model.intervene",
    "ablate": "neuronwidgets.model.intervene",
}
_SUBMODULES = ("llm", "render", "explain", "widgets", "categorize", "collect", "decode", "features")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"neuronwidgets.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'neuronwidgets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


__all__ = ["Session", "Trace", "NeuronIndex", "IndexFormatError", "ActivationRecord", "discretize", "datasets",
           "llm", "render", *_LAZY]
