"""Accept what users have: a sequence of Samples, or any iterable of (image, prompt[, caption])."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from neuronwidgets.datasets.base import Sample, SampleList


def as_samples(dataset: Any) -> Sequence[Sample]:
    """A sequence of `Sample` with a `fingerprint`, from any dataset form neuronwidgets accepts."""
    if isinstance(dataset, SampleList):
        return dataset
    if isinstance(dataset, Sequence) and len(dataset) and isinstance(dataset[0], Sample):
        if not hasattr(dataset, "fingerprint"):
            return SampleList(dataset, name="samples", fingerprint=f"samples:{len(dataset)}:" + ",".join(s.id for s in dataset[:3]))
        return dataset
    if not isinstance(dataset, Iterable):
        raise TypeError("a dataset must be a sequence of Sample or an iterable of (image, prompt[, caption]); "
                        f"got {type(dataset).__name__}")
    samples = []
    for i, item in enumerate(dataset):
        if isinstance(item, Sample):
            samples.append(item)
            continue
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"item {i} of the dataset is {type(item).__name__}; expected a Sample or a tuple (image, prompt[, caption])")
        image, prompt, *rest = item
        from neuronwidgets.model.inputs import load_image

        samples.append(Sample(id=f"item-{i:06d}", image=load_image(image), prompt=prompt, caption=rest[0] if rest else None))
    return SampleList(samples, name="items", fingerprint=f"items:{len(samples)}")
