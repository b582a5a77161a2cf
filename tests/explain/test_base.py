"""The explainer and simulator Protocols: both families satisfy them, by isinstance and by signature."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from neuronwidgets.explain import (
    ConceptExplainer,
    ConceptSimulator,
    Explainer,
    Explanation,
    NeuronExplainer,
    NeuronSimulator,
    Simulator,
    score,
)
from neuronwidgets.records import ActivationRecord


class _Client:
    model = "fake"


EXPLAINERS = [Explainer(_Client()), ConceptExplainer()]
SIMULATORS = [Simulator(_Client()), ConceptSimulator()]


def _accepts(impl, proto) -> list[str]:
    """Why `impl` cannot be called as `proto` is (empty: it can).

    Each of the Protocol's parameters must be there by the same name, callable the same way
    (a positional-or-keyword one may stand for a keyword-only one) and with the same default;
    any further parameter of `impl` must have a default. The return annotations must agree.
    """
    want = list(inspect.signature(proto).parameters.values())[1:]  # without self
    have = inspect.signature(impl).parameters
    problems = []
    for p in want:
        q = have.get(p.name)
        if q is None:
            problems.append(f"no parameter {p.name!r}")
            continue
        if q.kind != p.kind and not (p.kind is p.KEYWORD_ONLY and q.kind is q.POSITIONAL_OR_KEYWORD):
            problems.append(f"{p.name!r} is {q.kind.description}, the Protocol has {p.kind.description}")
        if q.default != p.default:
            problems.append(f"{p.name!r} defaults to {q.default!r}, the Protocol to {p.default!r}")
    order = [p.name for p in want if p.kind is not p.KEYWORD_ONLY]
    if [n for n in have if n in order] != order:
        problems.append(f"positional parameters in another order than {order}")
    extra = [n for n, q in have.items() if n not in {p.name for p in want} | {"self"}
             and q.default is q.empty and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD)]
    if extra:
        problems.append(f"further parameters without a default: {extra}")
    ret_impl, ret_proto = inspect.signature(impl).return_annotation, inspect.signature(proto).return_annotation
    if ret_impl != ret_proto:
        problems.append(f"returns {ret_impl!r}, the Protocol {ret_proto!r}")
    return problems


@pytest.mark.parametrize("explainer", EXPLAINERS, ids=lambda e: type(e).__name__)
def test_both_explainers_are_neuron_explainers(explainer):
    assert isinstance(explainer, NeuronExplainer)
    assert _accepts(type(explainer).explain, NeuronExplainer.explain) == []
    assert isinstance(explainer.name, str) and explainer.name


@pytest.mark.parametrize("simulator", SIMULATORS, ids=lambda s: type(s).__name__)
def test_both_simulators_are_neuron_simulators(simulator):
    assert isinstance(simulator, NeuronSimulator)
    assert _accepts(type(simulator).simulate, NeuronSimulator.simulate) == []
    assert isinstance(simulator.name, str) and simulator.name


def test_the_signature_check_notices_a_mismatch():
    class Positional:
        def simulate(self, explanation, item, modality="text", sample=None, grid=None, tokens=None) -> np.ndarray: ...

    class Missing:
        def explain(self, index, layer, neuron): ...

    # a positional-or-keyword `sample` may stand for the keyword-only one; a changed default may not
    assert _accepts(Positional.simulate, NeuronSimulator.simulate) == ["'modality' defaults to 'text', the Protocol to 'image'"]
    assert "no parameter 'category'" in _accepts(Missing.explain, NeuronExplainer.explain)


def test_objects_without_the_members_are_not_explainers_or_simulators():
    class NoName:
        def explain(self, index, layer, neuron, category=None): ...

    assert not isinstance(NoName(), NeuronExplainer)
    assert not isinstance(ConceptExplainer(), NeuronSimulator) and not isinstance(ConceptSimulator(), NeuronExplainer)


def test_a_simulator_of_your_own_scores_through_the_protocol():
    """Any object with `name` and `simulate` is a NeuronSimulator, and `score` takes it."""

    class Copycat:
        name = "copycat"

        def simulate(self, explanation, item, modality="image", *, sample=None, grid=None, tokens=None):
            return np.asarray(item.values(modality), np.float64) * 2 + 1  # perfectly correlated with the neuron

    rng = np.random.default_rng(0)
    records = [ActivationRecord(sample=i, sample_id=f"s{i}", activation=1.0, patch_map=rng.random((2, 2)), kind=kind)
               for i, kind in enumerate(["top", "top", "random", "random"])]
    sim = Copycat()
    assert isinstance(sim, NeuronSimulator)
    result = score(Explanation(0, 1, text="anything"), records, sim, baseline=False)
    assert result.score == pytest.approx(1.0) and result.simulator == "copycat"
