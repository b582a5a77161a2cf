"""The index folder: its layout, the codec of its layer files, safe writes, checked reads, queries and merges."""

from neuronwidgets.store.index import NeuronIndex
from neuronwidgets.store.layout import IndexFormatError

__all__ = ["IndexFormatError", "NeuronIndex"]
