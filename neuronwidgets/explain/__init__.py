"""Explain neurons, simulate them from explanations, and score the explanations (one interface, two families).

LLM family (the paper's method):
    exp = Explainer(client).explain(index, layer=3, neuron=117)
    result = score(exp, index, simulator=Simulator(client), holdout=heldout)
Concept family (offline, from concept masks):
    exp = ConceptExplainer(data).explain(index, layer=3, neuron=117)
    result = score(exp, index, simulator=ConceptSimulator(heldout), holdout=heldout)
Many neurons: explain_all(index, explainer=..., simulator=..., holdout=heldout).
Your own explainer or simulator: any object with the members of `NeuronExplainer` /
`NeuronSimulator` (typing Protocols, checked with isinstance).
"""

from neuronwidgets.explain.base import NeuronExplainer, NeuronSimulator
from neuronwidgets.explain.baseline import pick_baseline
from neuronwidgets.explain.batch import explain_all
from neuronwidgets.explain.concept import ConceptExplainer, ConceptSimulator
from neuronwidgets.explain.explainer import Explainer, ExplanationError
from neuronwidgets.explain.explanation import Explanation
from neuronwidgets.explain.scoring import ScoreResult, pearson, score
from neuronwidgets.explain.simulator import (
    SimulationParseError,
    Simulator,
    parse_activations,
)

__all__ = [
    "Explanation",
    "Explainer",
    "ExplanationError",
    "Simulator",
    "SimulationParseError",
    "parse_activations",
    "ConceptExplainer",
    "ConceptSimulator",
    "score",
    "ScoreResult",
    "pearson",
    "pick_baseline",
    "explain_all",
    "NeuronExplainer",
    "NeuronSimulator",
]
