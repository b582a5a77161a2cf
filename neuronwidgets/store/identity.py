"""Whose neurons an object holds (model, site), so neurons of different sites are never mixed silently."""

from __future__ import annotations

import warnings


def neurons_of(obj: object) -> tuple[str | None, str | None]:
    """(model, site) of a NeuronIndex, a Trace or a Session: whose neurons it holds (None where unknown)."""
    manifest = getattr(obj, "manifest", None)
    if isinstance(manifest, dict):
        return manifest.get("model"), manifest.get("site")
    return getattr(obj, "model_name", None) or getattr(obj, "name", None), getattr(obj, "site", None)


def check_same_neurons(a: object, b: object, what: str) -> None:
    """Refuse to put neurons of different sites side by side (layer 1 neuron 42 is another neuron there); warn for model names.

    a, b: NeuronIndexes, Traces or Sessions; `what` names them in the error ("the index and the trace").
    """
    (model_a, site_a), (model_b, site_b) = neurons_of(a), neurons_of(b)
    if site_a and site_b and site_a != site_b:
        raise ValueError(f"{what} record different neurons: site {site_a!r} against site {site_b!r}; "
                         "use a trace, session and indexes of one site (Session(..., site=...), collect with that session)")
    if model_a and model_b and model_a != model_b:  # a name, not the weights: one model may go by a hub id and a path
        warnings.warn(f"{what} name different models ({model_a!r} and {model_b!r}): if they are not the same weights, "
                      "layer and neuron numbers mean different neurons", stacklevel=3)
