"""What every neuronwidgets widget shares: its linked ES module, the scoped CSS, binary payloads, to_html."""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anywidget
import numpy as np
from PIL import Image

from neuronwidgets.widgets import _assets

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from neuronwidgets.model.trace import Trace
    from neuronwidgets.store.index import NeuronIndex

#: Largest side of an image sent to the browser (pixels); the patch grid is drawn over it.
MAX_IMAGE_SIDE = 448


class _LinkedModule:
    """`_esm` of a widget class: its entry module linked on first use (charts bundle vega, ~2 s once)."""

    def __init__(self, entry: str) -> None:
        self.entry = entry

    def __get__(self, obj: object, cls: type | None = None) -> Any:
        return self if obj is None else _assets.esm(self.entry)


class NeuronWidget(anywidget.AnyWidget):
    """Base class: set `_entry` to the widget's front-end module in neuronwidgets/js/."""

    _entry: ClassVar[str] = ""
    _css = _assets.CSS_FILE
    #: Traits whose observers recompute other traits: a change to one of them and what it
    #: recomputes go to the front-end as one message.
    _sync_together: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        if cls.__dict__.get("_entry"):
            cls._esm = _LinkedModule(cls._entry)
        super().__init_subclass__(**kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Held while several traits change together; a widget that sets traits from another
        # thread (the explorer's simulations) takes it too, so no change can slip into a
        # batch that is being sent (ipywidgets' hold_sync is not thread-safe).
        if "_sync_lock" not in self.__dict__:
            self._sync_lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def notify_change(self, change: dict[str, Any]) -> None:
        """Send a trait change; one of `_sync_together` goes with what it recomputes, in one message."""
        if change.get("name") in self._sync_together and change.get("type") == "change":
            with self._sync_lock, self.hold_sync():
                super().notify_change(change)
        else:
            super().notify_change(change)

    _updating = False

    def _show(self, layer: int, neuron: int, state: dict[str, Any]) -> None:
        """Set layer, neuron and the traits they determine in one message (observers stay quiet meanwhile)."""
        self._updating = True
        try:
            with self.hold_sync():
                self.layer, self.neuron = layer, neuron
                for key, value in state.items():
                    setattr(self, key, value)
        finally:
            self._updating = False

    def to_html(self, path: str | Path, title: str | None = None) -> Path:
        """Write this widget as one self-contained HTML file that renders offline (see `export.to_html`)."""
        from neuronwidgets.widgets.export import to_html

        return to_html(self, path, title=title)

    def _export_state(self) -> dict[str, Any]:
        """The state a static page starts from (subclasses add what the kernel would compute)."""
        return self.get_state()


def check_trace_place(trace: Trace, name: str, value: int) -> int:
    """For a trait validator: `value` if the layer or neuron (`name`) is in `trace`, else the trace's IndexError.

    Checked before the trait changes, so a bad number leaves the widget as it was.
    """
    (trace._layer_slot if name == "layer" else trace._check_neuron)(value)
    return value


# --- payloads -----------------------------------------------------------------------------
def finite(value: object) -> float | None:
    """A float, or None for what is missing, not a number or not finite (JSON has no NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def f32(values: ArrayLike) -> bytes:
    """float32 little-endian bytes (read in the browser as Float32Array via DataView)."""
    return np.ascontiguousarray(np.asarray(values, dtype="<f4")).tobytes()


def i32(values: ArrayLike) -> bytes:
    """int32 little-endian bytes."""
    return np.ascontiguousarray(np.asarray(values, dtype="<i4")).tobytes()


def png(image: Image.Image, max_side: int = MAX_IMAGE_SIDE, crop: bool = True) -> bytes:
    """The image as the model saw it (square centre crop), at most `max_side` pixels, as PNG bytes."""
    from neuronwidgets.render import model_view

    view = model_view(image, crop=crop)
    if max(view.size) > max_side:
        scale = max_side / max(view.size)
        view = view.resize((max(1, round(view.width * scale)), max(1, round(view.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    view.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def scale_for(values: ArrayLike, vmax: float | None) -> float:
    """The colour scale's top: `vmax` when given (the neuron's max over a dataset), else the largest |value| shown."""
    if vmax is not None and np.isfinite(vmax) and vmax > 0:
        return float(vmax)
    arr = np.asarray(values, np.float64)
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return 1.0
    top = float(arr.max())
    if top > 0:
        return top
    low = float(np.abs(arr).max())
    return low if low > 0 else 1.0


def token_fields(trace: Trace) -> dict[str, Any]:
    """Tokens as the token view needs them: text ('' for image tokens), patch index per token, grid."""
    tok = trace.tokens
    rows, cols = trace.grid
    is_image = (tok["modality"] == "image").to_numpy()
    # the first image's grid patches row-major; its other image tokens (an overview, newlines) and other
    # images' tokens rows * cols: in the chip, not in its grid
    on_grid = is_image & (tok["row"].to_numpy() >= 0) & ((tok["image"].to_numpy() == 0) if "image" in tok else True)
    patch = np.where(on_grid, tok["row"].to_numpy() * cols + tok["col"].to_numpy(), np.where(is_image, rows * cols, -1))
    texts = tok["token"].astype(str).tolist()
    image_token = next((t for t, m in zip(texts, is_image) if m), "<image>")
    return {
        "tokens": [("" if m else t) for t, m in zip(texts, is_image)],
        "patch": i32(patch),
        "grid": [int(rows), int(cols)],
        "image_token": image_token,
    }


def patch_top(trace: Trace, layer: int, k: int) -> tuple[bytes, bytes, int]:
    """For every patch (row-major), the `k` most active neurons of `layer`: (ids int32, values float32, k)."""
    maps = trace.image_maps(layer)  # [rows, cols, neurons]
    flat = maps.reshape(-1, maps.shape[-1])
    k = int(min(k, flat.shape[1]))
    if k <= 0 or not flat.size:
        return b"", b"", 0
    part = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(flat, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    return i32(ids), f32(np.take_along_axis(vals, order, axis=1)), k


def neuron_max(index: NeuronIndex | None, layer: int, neuron: int) -> float | None:
    """The neuron's max over the index's dataset, or None where that is unknown."""
    if index is None:
        return None
    try:
        value = float(index.neuron_max(layer, neuron))
    except (IndexError, KeyError, ValueError, AttributeError):
        return None
    return value if np.isfinite(value) and value > 0 else None
