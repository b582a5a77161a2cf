"""neuronwidgets: record, sort, explain and show the MLP neurons of vision-language models.

    import neuronwidgets as nw
    session = nw.Session.toy()
    trace = session.trace(image, "USER: <image>\\nWhat is the red shape? ASSISTANT:")
"""

from neuronwidgets import datasets
from neuronwidgets.session import Session
from neuronwidgets.trace import Trace

__version__ = "0.1.0"
__all__ = ["Session", "Trace", "datasets"]
