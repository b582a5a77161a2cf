"""The adapter interface, the neuron sites, and the hook context that records them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from neuronwidgets.constants import PROMPT_TEMPLATE, SITES


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"unknown neuron site {site!r}; choose one of {', '.join(SITES)}")
    return site


class ModelAdapter:
    """What neuronwidgets needs to know about one model family. Subclass per family."""

    family: str = "?"
    image_placeholder: str = "<image>"
    prompt_template: str = PROMPT_TEMPLATE

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def __init__(self, model: nn.Module, processor):
        self.model = model
        self.processor = processor

    # --- neurons -------------------------------------------------------------
    def decoder_layers(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    @property
    def n_layers(self) -> int:
        return len(self.decoder_layers())

    @property
    def n_neurons(self) -> int:
        raise NotImplementedError

    # --- image patches -------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        raise NotImplementedError

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the image-patch grid, in the order the image tokens appear."""
        raise NotImplementedError

    # --- recording -----------------------------------------------------------
    @contextlib.contextmanager
    def record(self, layers: Sequence[int], site: str = "act", on_activation=None) -> Iterator[dict[int, torch.Tensor]]:
        """Hook the neurons of `layers` at `site`; yields a dict filled by the next forward.

        Tensors stay on the model's device (no host copy here). With `on_activation(layer,
        tensor)` given, each layer is handed over as soon as it is computed instead of kept,
        so a reduction never holds more than one layer. Hooks are removed in a `finally`, so
        none outlives the block, whatever raises inside it.
        """
        check_site(site)
        store: dict[int, torch.Tensor] = _CallbackStore(on_activation) if on_activation else {}
        handles = []
        all_layers = self.decoder_layers()
        try:
            for layer in layers:
                mlp = all_layers[layer].mlp
                if site == "act":
                    handles.append(mlp.act_fn.register_forward_hook(_keep_output(store, layer)))
                else:
                    handles.append(mlp.down_proj.register_forward_pre_hook(_keep_input(store, layer)))
            yield store
        finally:
            for h in handles:
                h.remove()


class _CallbackStore(dict):
    """A dict whose writes go straight to a callback (nothing is kept)."""

    def __init__(self, callback):
        super().__init__()
        self._callback = callback

    def __setitem__(self, layer, tensor):
        self._callback(layer, tensor)


def _keep_output(store: dict, layer: int):
    def hook(module, args, output):
        store[layer] = output.detach()

    return hook


def _keep_input(store: dict, layer: int):
    def hook(module, args):
        store[layer] = args[0].detach()

    return hook


def adapter_for(model: nn.Module, processor) -> ModelAdapter:
    """The adapter for `model`'s family, or an error that lists the supported families."""
    from neuronwidgets.model.adapters.llava import LlavaAdapter

    for cls in (LlavaAdapter,):
        if cls.supports(model):
            return cls(model, processor)
    supported = ", ".join(f"{c.family}" for c in (LlavaAdapter,))
    raise TypeError(
        f"neuronwidgets does not know where the neurons of {type(model).__name__} are. "
        f"Supported model families: {supported}."
    )
