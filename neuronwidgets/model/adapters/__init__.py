"""Per model family: where the MLP neurons are and which positions are image patches."""

from neuronwidgets.model.adapters.base import SITES, ModelAdapter, adapter_for
from neuronwidgets.model.adapters.llava import LlavaAdapter

__all__ = ["SITES", "ModelAdapter", "LlavaAdapter", "adapter_for"]
