"""The widgets' colour scales in Python: the same numbers as `neuronwidgets/js/core.js`.

Heatmap cells and tokens are coloured by the signed 0-10 level of `records.discretize`:
floor(10 * |a| / vmax) with the sign of `a`. Tests and static pages use these functions to
know which colour a known activation must get; the browser tests check that they agree
with what the front-end draws.
"""

from __future__ import annotations

import math

POSITIVE = (214, 96, 77)
NEGATIVE = (67, 147, 195)
VIRIDIS = (
    (68, 1, 84), (72, 36, 117), (65, 68, 135), (53, 95, 141), (42, 120, 142), (33, 145, 140),
    (34, 168, 132), (68, 191, 112), (122, 209, 81), (189, 223, 38), (253, 231, 37),
)
CMAPS = ("diverging", "reveal", "viridis")


def level(value: float, vmax: float) -> int:
    """Signed level in -10..10: floor(10 * |value| / vmax) with the sign of value (0 when vmax <= 0)."""
    value, vmax = float(value), float(vmax)
    if not vmax > 0 or not math.isfinite(value) or value == 0:
        return 0
    lv = min(10, math.floor(10 * abs(value) / vmax))
    return -lv if value < 0 else lv


def level_color(lv: int, cmap: str = "diverging") -> str:
    """The CSS colour the front-end gives a level, spelled the way getComputedStyle reports it."""
    if cmap == "reveal":
        a = (10 - max(0, lv)) / 10
        if a == 1:
            return "rgb(255, 255, 255)"
        return "rgba(255, 255, 255, 0)" if a == 0 else f"rgba(255, 255, 255, {a:g})"
    if cmap == "viridis":
        r, g, b = VIRIDIS[max(0, lv)]
        return f"rgb({r}, {g}, {b})"
    base = NEGATIVE if lv < 0 else POSITIVE
    r, g, b = (255 + ((c - 255) * abs(lv) + 5) // 10 for c in base)
    return f"rgb({r}, {g}, {b})"


def value_color(value: float, vmax: float, cmap: str = "diverging") -> str:
    """The CSS colour the front-end gives `value` on a scale topped by `vmax` (`level_color` of its level)."""
    return level_color(level(value, vmax), cmap)


def fmt(value: float) -> str:
    """A value as the tooltips show it (JavaScript's toFixed(3))."""
    return "n/a" if not math.isfinite(float(value)) else f"{float(value):.3f}"
