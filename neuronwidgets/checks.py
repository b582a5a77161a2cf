"""Argument checks shared by the public API: a layer or neuron number is a whole number, said clearly when not."""

from __future__ import annotations

import numbers
import operator


def whole_number(value: object, what: str) -> int:
    """`value` as an int: an int, a numpy or torch integer, or a float without a fraction (3.0).

    Anything else (1.5, "12", None) is a TypeError naming `what`, instead of being truncated
    (neuron 1.5 read as neuron 1) or read character by character (layers="12" as [1, 2]).
    """
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            if isinstance(value, numbers.Real) and float(value).is_integer():
                return int(value)
    raise TypeError(f"{what} must be a whole number, got {value!r}")
