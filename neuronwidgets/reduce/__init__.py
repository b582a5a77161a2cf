"""Mergeable reductions of one layer's neurons over a stream of batches: moments, histograms, top-k with maps.

Pure tensor code on the model's device; it knows nothing of models, files or datasets, so
the collector (collect/) feeds it and the store (store/) saves, loads and merges it.
"""

from neuronwidgets.reduce.random_set import RandomSet, random_key
from neuronwidgets.reduce.state import LayerState

__all__ = ["LayerState", "RandomSet", "random_key"]
