"""A collection's settings, checked before any work: text sources, sizes, dataset positions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

TEXT_SOURCES = ("generate", "caption", "prompt")


def check_indices(indices: Sequence[int], size: int) -> list[int]:
    """Dataset positions to collect, each once: they are the samples' numbers in the index."""
    positions = [int(i) for i in indices]
    bad = [i for i in positions if not 0 <= i < size]
    if bad:
        raise IndexError(f"indices must be dataset positions 0..{size - 1}; got {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    repeated = sorted(i for i, count in Counter(positions).items() if count > 1)
    if repeated:
        raise ValueError(f"indices must name each sample once (a sample counted twice would fill its neurons' top-k twice); "
                         f"repeated: {repeated[:5]}")
    return positions
