"""Datasets: sequences of `Sample` (image, prompt, caption, QA, concept masks)."""

from neuronwidgets.datasets.base import DESCRIBE_PROMPT, PROMPT_TEMPLATE, QA, Sample, SampleList

__all__ = ["QA", "Sample", "SampleList", "PROMPT_TEMPLATE", "DESCRIBE_PROMPT"]
