"""The two roles of the explain stage, as Protocols: what `score`, `explain_all` and the explorer call.

An explainer reads a neuron's records in an index and says in words what it responds to; a
simulator predicts the neuron's 0-10 activations on an input from such an explanation alone.
Both families implement them (`Explainer` and `Simulator` ask a chat model; `ConceptExplainer`
and `ConceptSimulator` use concept masks), and so can your own classes: no base class to
inherit, only these members (checked with `isinstance(obj, NeuronExplainer)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.explain.explanation import Explanation
    from neuronwidgets.records import ActivationRecord
    from neuronwidgets.store.index import NeuronIndex


@runtime_checkable
class NeuronExplainer(Protocol):
    """Explains one neuron of an index: `explain(index, layer, neuron)` -> Explanation.

    `name` goes into the explanation and the explanations table (a rerun skips the neurons a
    same-named explainer explained). Optional members `explain_all` reads when present:
    `settings` (a JSON-able dict; a change means explaining again), `prompt_version`,
    `client` (its `max_concurrency`, `model` and `usage`) and `unread_kinds` (the record
    kinds it leaves unread, to score on).
    """

    name: str

    def explain(self, index: NeuronIndex, layer: int, neuron: int, category: str | None = None) -> Explanation:
        """Explain neuron `neuron` of `layer` (category from `index.categories()` unless given)."""
        ...


@runtime_checkable
class NeuronSimulator(Protocol):
    """Predicts a neuron's 0-10 activations on an input from an explanation: `simulate(explanation, item, modality)`.

    `item` is an ActivationRecord (the scorer's held-out inputs) or a Sample (the explorer's
    own inputs, with `grid` and `tokens` given); the result is one value per patch
    (row-major) for 'image', or per token for 'text'. `name` labels the scores.
    """

    name: str

    def simulate(self, explanation: Explanation | str, item: ActivationRecord | Sample, modality: str = "image", *,
                 sample: Sample | None = None, grid: tuple[int, int] | None = None, tokens: list[str] | None = None) -> np.ndarray:
        """Predicted 0-10 activations of the explained neuron on `item` for 'image' or 'text'."""
        ...
