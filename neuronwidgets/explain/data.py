"""Where explainers, simulators and the scorer find things: a neuron's category, a record's sample, its image."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from neuronwidgets.records import ActivationRecord

if TYPE_CHECKING:
    import pandas as pd

    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.store.index import NeuronIndex

_categories: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_ids: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def is_index(obj: Any) -> bool:
    """Whether `obj` looks like a NeuronIndex (it hands out records per neuron)."""
    return hasattr(obj, "records") and hasattr(obj, "neuron_max")


def categories(index: NeuronIndex, rule: str = "paper") -> pd.DataFrame:
    """`index.categories(rule)`, computed once per index object (it reads every layer)."""
    with _lock:
        per_index = _categories.setdefault(index, {})
        if rule not in per_index:
            per_index[rule] = index.categories(rule=rule)
        return per_index[rule]


def category_of(index: NeuronIndex, layer: int, neuron: int, rule: str = "paper") -> str:
    """The category of one neuron ('visual', 'text', 'multi-modal', 'unactivated' or 'inactive')."""
    table = categories(index, rule)
    row = table[(table["layer"] == layer) & (table["neuron"] == neuron)]
    if row.empty:
        raise IndexError(f"layer {layer} neuron {neuron} is not in this index")
    return str(row["category"].iloc[0])


def dataset_of(source: NeuronIndex | Sequence[Sample] | None) -> Sequence[Sample] | None:
    """The samples behind `source`: an index's dataset, or `source` itself when it is a sequence of samples."""
    if source is None:
        return None
    if is_index(source):
        return source.dataset
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return source
    raise TypeError(f"expected a NeuronIndex or a sequence of samples, got {type(source).__name__}")


def _positions_by_id(data) -> dict[str, int]:
    try:
        with _lock:
            if data not in _ids:
                _ids[data] = {str(getattr(s, "id", i)): i for i, s in enumerate(data)}
            return _ids[data]
    except TypeError:  # not weak-referenceable (a plain list): no cache
        return {str(getattr(s, "id", i)): i for i, s in enumerate(data)}


def sample_of(source: NeuronIndex | Sequence[Sample] | None, record: ActivationRecord) -> Sample:
    """The Sample a record came from: by position in the source's dataset, else by its id (a superset or shifted slice)."""
    data = dataset_of(source)
    if data is None:
        raise ValueError(
            "no dataset to find the record's sample in: attach it to the index (index.attach(data)) "
            "or pass the samples explicitly"
        )
    pos = int(record.sample)
    sample = data[pos] if 0 <= pos < len(data) else None
    sid = getattr(sample, "id", None)
    if sample is not None and (not record.sample_id or sid is None or str(sid) == str(record.sample_id)):
        return sample
    found = _positions_by_id(data).get(str(record.sample_id))
    if found is None:
        raise ValueError(
            f"sample {record.sample_id!r} (position {pos}) is not in the dataset given: "
            "is this the dataset the index was collected over?"
        )
    return data[found]
