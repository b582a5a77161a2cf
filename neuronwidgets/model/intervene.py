"""Interventions on MLP neurons: clamp, zero-ablate or mean-ablate neurons while a block runs.

    with clamp(layers, {(3, 117): 8.0}):            # neuron 3/117 reads 8.0 at every position
        model.generate(...)
    with ablate(layers, [(3, 117)]):                 # ... or 0
        ...
    with ablate(layers, [(3, 117)], means={(3, 117): 0.42}):   # ... or its mean activation
        ...

`layers` is the decoder's layer list (`model.model.language_model.layers` for LLaVA, the
adapter's `decoder_layers()`), a Session (its adapter's layers), or a whole transformers
model, whose language model is found by `language_model_of`.

Sites, as where neurons are recorded (`neuronwidgets` adapters):

- ``"act"``: the output of ``mlp.act_fn`` (``act_fn(gate_proj(x))``, the paper's neuron). A
  clamped value ``v`` still meets ``up_proj(x)``, so what reaches the residual stream is
  ``v * up_proj(x)[n] * W_down[:, n]``, which varies with the position.
- ``"mlp_in"``: the input to ``down_proj`` (``act_fn(gate_proj(x)) * up_proj(x)``). A clamped
  value ``v`` adds exactly ``v * W_down[:, n]`` (plus the bias, if any) at every position.

The value replaces the neuron's activation at every position of every forward pass in the
block (each generation step included). Hooks are removed in a ``finally``: none outlives the
block, whatever raises inside it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from neuronwidgets.checks import whole_number
from neuronwidgets.model.adapters.base import check_site, site_hooks

if TYPE_CHECKING:
    from neuronwidgets.model.session import Session

#: Value words accepted in a clamp spec besides numbers.
ABLATE, MEAN = "ablate", "mean"

Neuron = tuple[int, int]


def language_model_of(model: nn.Module) -> nn.Module:
    """The decoder stack of a transformers causal LM or VLM: the module holding `.layers` (and the final `.norm`)."""
    inner = getattr(model, "model", model)
    candidates = [getattr(inner, "language_model", None), getattr(inner, "text_model", None)]
    outer = getattr(model, "language_model", None)  # transformers < 4.52 kept LLaVA's LM at the top level
    if outer is not None:
        candidates.append(getattr(outer, "model", outer))
    candidates += [inner, model]
    for lm in candidates:
        if lm is not None and isinstance(getattr(lm, "layers", None), (nn.ModuleList, list, tuple)):
            return lm
    raise TypeError(f"cannot find the decoder layers of {type(model).__name__}: "
                    "neuronwidgets supports Llama-style causal LMs and the VLMs built on them")


def _layer_list(model_layers) -> Sequence[nn.Module]:
    """The decoder layers: a layer list as it is, a Session's from its adapter, a model's from `language_model_of`."""
    if isinstance(model_layers, (nn.ModuleList, list, tuple)):
        return model_layers
    adapter = getattr(model_layers, "adapter", None)
    if adapter is not None and hasattr(adapter, "decoder_layers"):
        return adapter.decoder_layers()
    if isinstance(model_layers, nn.Module):
        return language_model_of(model_layers).layers
    raise TypeError(f"expected the decoder layers (an nn.ModuleList), a Session or a transformers model, "
                    f"got {type(model_layers).__name__}")


def _mlp(layers: Sequence[nn.Module], layer: int) -> nn.Module:
    mlp = getattr(layers[layer], "mlp", None)
    if mlp is None or not hasattr(mlp, "down_proj") or not hasattr(mlp, "act_fn"):
        raise TypeError(f"layer {layer} has no Llama-style MLP (mlp.act_fn, mlp.down_proj): cannot clamp its neurons")
    return mlp


def n_neurons_of(layers: Sequence[nn.Module], layer: int) -> int:
    """How many MLP neurons `layer` has (down_proj's input width)."""
    return int(_mlp(layers, layer).down_proj.in_features)


def check_neuron(layers: Sequence[nn.Module], key: Any, what: str = "neuron") -> Neuron:
    """`key` as a valid (layer, neuron) pair of `layers`, or a clear error naming the valid ranges."""
    if not isinstance(key, tuple) or len(key) != 2:
        raise TypeError(f"a {what} is a (layer, neuron) pair, got {key!r}")
    layer = whole_number(key[0], "layer")
    neuron = whole_number(key[1], "neuron")
    n_layers = len(layers)
    if not 0 <= layer < n_layers:
        raise IndexError(f"layer {layer} does not exist: the model has layers 0..{n_layers - 1}")
    n = n_neurons_of(layers, layer)
    if not 0 <= neuron < n:
        raise IndexError(f"neuron {neuron} does not exist in layer {layer}: it has neurons 0..{n - 1}")
    return layer, neuron


def _resolve_value(key: Neuron, value, means: Mapping | None) -> float:
    if isinstance(value, str):
        if value == ABLATE:
            return 0.0
        if value == MEAN:
            if means is None or key not in means:
                raise KeyError(f"neuron {key} is to be set to its mean, but `means` holds no mean for it")
            value = means[key]
        else:
            raise ValueError(f"unknown clamp value {value!r} for neuron {key}: give a number, {ABLATE!r} or {MEAN!r}")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"the clamp value of neuron {key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"the clamp value of neuron {key} must be finite, got {value}")
    return value


def resolve(layers: Sequence[nn.Module], spec: Mapping, means: Mapping | None = None) -> dict[int, dict[int, float]]:
    """A clamp spec checked and grouped by layer: {layer: {neuron: value}}."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"clamp takes a mapping {{(layer, neuron): value}}, got {type(spec).__name__}")
    if means is not None:
        means = {check_neuron(layers, k, "mean's neuron"): v for k, v in means.items()}
    by_layer: dict[int, dict[int, float]] = {}
    for key, value in spec.items():
        key = check_neuron(layers, key)
        by_layer.setdefault(key[0], {})[key[1]] = _resolve_value(key, value, means)
    return by_layer


def _setter(neurons: dict[int, float]):
    idx = torch.tensor(list(neurons), dtype=torch.long)
    vals = torch.tensor(list(neurons.values()), dtype=torch.float32)

    def apply(t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        out[..., idx.to(t.device)] = vals.to(device=t.device, dtype=t.dtype)
        return out

    return apply


@contextlib.contextmanager
def clamp(model_layers: Sequence[nn.Module] | nn.Module | Session, spec: Mapping[Neuron, float | str], site: str = "act",
          means: Mapping[Neuron, float] | None = None) -> Iterator[dict[int, dict[int, float]]]:
    """Set neurons to fixed values at every position while the block runs; yields {layer: {neuron: value}}.

    `spec` maps (layer, neuron) to a number, to ``"ablate"`` (0) or to ``"mean"`` (the value
    `means[(layer, neuron)]`). Hooks are removed in a ``finally``.
    """
    check_site(site)
    layers = _layer_list(model_layers)
    by_layer = resolve(layers, spec, means)
    if site == "act":
        owners: dict[int, int] = {}
        for layer in range(len(layers)):
            mlp = getattr(layers[layer], "mlp", None)
            fn = getattr(mlp, "act_fn", None)
            if fn is not None and layer in by_layer and id(fn) in owners:
                raise NotImplementedError(
                    f"layers {owners[id(fn)]} and {layer} share one act_fn module: a hook on it would clamp both; "
                    "use site='mlp_in'")
            if fn is not None:
                owners.setdefault(id(fn), layer)
    with site_hooks(layers, {layer: _setter(neurons) for layer, neurons in by_layer.items()}, site):
        yield by_layer


def _pairs(neurons) -> list:
    """(layer, neuron) pairs from an iterable of pairs, or one bare pair."""
    if isinstance(neurons, Mapping):
        raise TypeError("ablate takes (layer, neuron) pairs, not a mapping: a mapping of values is a clamp")
    neurons = list(neurons)
    if len(neurons) == 2 and all(isinstance(x, numbers.Integral) for x in neurons):
        return [tuple(neurons)]  # one (layer, neuron) pair given bare
    return [tuple(k) if isinstance(k, list) else k for k in neurons]


def ablation_spec(clamp_spec: Mapping | None = None, ablate_neurons: Iterable | None = None,
                  means: Mapping | None = None) -> dict:
    """One clamp spec from `clamp_spec` and `ablate_neurons` (0, or "mean" where `means` has the neuron)."""
    if clamp_spec is not None and not isinstance(clamp_spec, Mapping):
        raise TypeError(f"clamp takes a mapping {{(layer, neuron): value}}, got {type(clamp_spec).__name__}")
    spec = dict(clamp_spec or {})
    mean_keys = set(means or {})
    for key in _pairs(ablate_neurons or []):
        if key in spec:
            raise ValueError(f"neuron {key} is both clamped and ablated: give it once")
        spec[key] = MEAN if key in mean_keys else ABLATE
    return spec


def ablate(model_layers: Sequence[nn.Module] | nn.Module | Session, neurons: Iterable[Neuron], site: str = "act",
           means: Mapping[Neuron, float] | None = None) -> contextlib.AbstractContextManager[dict[int, dict[int, float]]]:
    """Zero-ablate `neurons` while the block runs (or set each to its mean where `means` holds one)."""
    return clamp(model_layers, ablation_spec(None, neurons, means), site=site, means=means)
