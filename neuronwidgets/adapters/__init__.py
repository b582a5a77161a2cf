"""Per model family: where the MLP neurons are and which positions are image patches."""

from neuronwidgets.adapters.base import SITES, ModelAdapter, adapter_for
from neuronwidgets.adapters.llava import LlavaAdapter

__all__ = ["SITES", "ModelAdapter", "LlavaAdapter", "adapter_for"]
