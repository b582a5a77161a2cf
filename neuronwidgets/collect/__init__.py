"""Collection: stream a dataset through a Session's hooks into a NeuronIndex (one process, or one rank of torchrun)."""

from neuronwidgets.collect.config import TEXT_SOURCES
from neuronwidgets.collect.runner import collect

__all__ = ["TEXT_SOURCES", "collect"]
