"""Per model family: where the MLP neurons are and which positions are image patches."""

from neuronwidgets.model.adapters.base import SITES, ModelAdapter, adapter_classes, adapter_for
from neuronwidgets.model.adapters.family import FamilyAdapter
from neuronwidgets.model.adapters.gemma3 import Gemma3Adapter
from neuronwidgets.model.adapters.idefics3 import Idefics3Adapter
from neuronwidgets.model.adapters.internvl import InternVLAdapter
from neuronwidgets.model.adapters.layout import MAIN_VIEW, NEWLINE, ImageLayout
from neuronwidgets.model.adapters.llava import LlavaAdapter
from neuronwidgets.model.adapters.llava_next import LlavaNextAdapter, LlavaOnevisionAdapter
from neuronwidgets.model.adapters.qwen2_vl import Qwen2VLAdapter

__all__ = ["SITES", "MAIN_VIEW", "NEWLINE", "ModelAdapter", "FamilyAdapter", "ImageLayout", "LlavaAdapter", "LlavaNextAdapter",
           "LlavaOnevisionAdapter", "Qwen2VLAdapter", "Gemma3Adapter", "Idefics3Adapter", "InternVLAdapter",
           "adapter_classes", "adapter_for"]
