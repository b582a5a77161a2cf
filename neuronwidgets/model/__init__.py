"""The model side: a Session wraps a VLM and its processor; adapters say where each family's neurons and patches are."""

from neuronwidgets.model.session import Encoded, Session
from neuronwidgets.model.trace import Trace

__all__ = ["Encoded", "Session", "Trace"]
