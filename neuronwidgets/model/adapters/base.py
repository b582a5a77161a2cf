"""The adapter interface, the neuron sites, and the hook context that records them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from neuronwidgets.constants import PROMPT_TEMPLATE, SITES
from neuronwidgets.model.adapters.layout import ImageLayout, one_grid

if TYPE_CHECKING:
    from PIL import Image
    from transformers import ProcessorMixin


def llava_question(prompt: str) -> str | None:
    """The question of a prompt that is exactly LLaVA-1.5's template around it ("USER: <image>\\n{question} ASSISTANT:",
    the datasets' default prompts), else None."""
    head, tail = PROMPT_TEMPLATE.split("{question}")
    if not isinstance(prompt, str) or len(prompt) < len(head) + len(tail) or not (prompt.startswith(head) and prompt.endswith(tail)):
        return None
    question = prompt[len(head) : len(prompt) - len(tail)]
    return None if "<image>" in question else question


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"unknown neuron site {site!r}; choose one of {', '.join(SITES)}")
    return site


class ModelAdapter:
    """What neuronwidgets needs to know about one model family. Subclass per family.

    The defaults describe LLaVA-1.5: one fixed grid for every input, its image tokens in row-major
    order, pixels [3, H, W] per input stacked into a batch. Families whose grid varies per input
    subclass `FamilyAdapter` (family.py) instead.
    """

    family: str = "?"
    #: The transformers classes (by name) this adapter reads.
    model_classes: tuple[str, ...] = ()
    image_placeholder: str = "<image>"
    prompt_template: str = PROMPT_TEMPLATE
    #: One grid for every input (`grid`); False: read each input's from `layout`.
    fixed_grid: bool = True
    #: The grid covers the image's centre square (CLIP's resize and centre crop); False: the whole image.
    crop: bool = True
    #: The processor takes a list of images per prompt (the families) rather than one flat list (LLaVA-1.5).
    nested_images: bool = False
    #: The processor outputs the model takes (None: all of them).
    accepted_inputs: set[str] | None = None

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether `model` is of this family: by default, its class is one of `model_classes`."""
        return type(model).__name__ in cls.model_classes

    def __init__(self, model: nn.Module, processor: ProcessorMixin | None) -> None:
        self.model = model
        self.processor = processor

    # --- prompts -------------------------------------------------------------
    def adapt_prompt(self, prompt: str) -> str:
        """`prompt` in this model's format: a prompt that is exactly LLaVA-1.5's template around a question (the datasets'
        defaults) becomes `prompt_template` for that question when this adapter's template is another; any other prompt
        is returned as given."""
        question = llava_question(prompt)
        if question is None:
            return prompt
        template = self.prompt_template
        return prompt if template == PROMPT_TEMPLATE else template.format(question=question)

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

    def layout(self, input_ids: Sequence[int], vision: dict[str, torch.Tensor] | None = None) -> ImageLayout:
        """Where one encoded input's image tokens are: here all of them, in order, fill the fixed grid."""
        ids = np.asarray(input_ids)
        return one_grid(np.flatnonzero(ids == self.image_token_id), *self.grid)

    def count_image_tokens(self, image: Image.Image) -> int:
        """How many image tokens one image becomes (here always the grid's)."""
        rows, cols = self.grid
        return rows * cols

    def model_inputs(self, batch: Sequence, width: int, dtype: torch.dtype, device: str | torch.device) -> dict[str, torch.Tensor]:
        """The model inputs of a right-padded batch besides input_ids and attention_mask: the stacked pixels."""
        return {"pixel_values": torch.stack([e.pixel_values for e in batch]).to(device, dtype)}

    # --- recording -----------------------------------------------------------
    @contextlib.contextmanager
    def record(self, layers: Sequence[int], site: str = "act",
               on_activation: Callable[[int, torch.Tensor], None] | None = None) -> Iterator[dict[int, torch.Tensor]]:
        """Hook the neurons of `layers` at `site`; yields a dict filled by the next forward.

        Tensors stay on the model's device (no host copy here). With `on_activation(layer,
        tensor)` given, each layer is handed over as soon as it is computed instead of kept,
        so a reduction never holds more than one layer. Hooks are removed in a `finally`, so
        none outlives the block, whatever raises inside it.
        """
        store: dict[int, torch.Tensor] = _CallbackStore(on_activation) if on_activation else {}
        with site_hooks(self.decoder_layers(), {layer: _keep(store, layer) for layer in layers}, site):
            yield store


@contextlib.contextmanager
def site_hooks(all_layers: Sequence[nn.Module], fns: dict[int, Callable[[torch.Tensor], torch.Tensor | None]],
               site: str = "act") -> Iterator[None]:
    """Hook `site` of each layer in `fns`: `fns[layer](tensor)` sees the neurons' activations and may return a
    replacement (None keeps them). Hooks are removed in a `finally`."""
    check_site(site)
    handles = []
    try:
        for layer, fn in fns.items():
            mlp = all_layers[layer].mlp
            if site == "act":
                handles.append(mlp.act_fn.register_forward_hook(lambda m, args, out, f=fn: f(out)))
            else:
                handles.append(mlp.down_proj.register_forward_pre_hook(lambda m, args, f=fn: _replace_first(args, f(args[0]))))
        yield
    finally:
        for h in handles:
            h.remove()


def _replace_first(args: tuple, first: torch.Tensor | None) -> tuple | None:
    return None if first is None else (first, *args[1:])


class _CallbackStore(dict):
    """A dict whose writes go straight to a callback (nothing is kept)."""

    def __init__(self, callback):
        super().__init__()
        self._callback = callback

    def __setitem__(self, layer, tensor):
        self._callback(layer, tensor)


def _keep(store: dict, layer: int):
    def keep(tensor: torch.Tensor) -> None:
        store[layer] = tensor.detach()

    return keep


def adapter_classes() -> list[type[ModelAdapter]]:
    """Every family adapter, in the order adapter_for tries them."""
    from neuronwidgets.model.adapters.gemma3 import Gemma3Adapter
    from neuronwidgets.model.adapters.idefics3 import Idefics3Adapter
    from neuronwidgets.model.adapters.internvl import InternVLAdapter
    from neuronwidgets.model.adapters.llava import LlavaAdapter
    from neuronwidgets.model.adapters.llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
    from neuronwidgets.model.adapters.qwen2_vl import Qwen2VLAdapter

    return [LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, Qwen2VLAdapter, Gemma3Adapter, Idefics3Adapter,
            InternVLAdapter]


def adapter_for(model: nn.Module, processor: ProcessorMixin | None) -> ModelAdapter:
    """The adapter for `model`'s family, or an error that lists the supported families."""
    classes = adapter_classes()
    for cls in classes:
        if cls.supports(model):
            return cls(model, processor)
    supported = "; ".join(f"{c.family}" for c in classes)
    raise TypeError(
        f"neuronwidgets does not know where the neurons of {type(model).__name__} are. "
        f"Supported model families: {supported}."
    )
