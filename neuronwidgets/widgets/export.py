"""Static export: one self-contained HTML file per call, rendering offline (no kernel, no network, no CDN).

The page holds, in order:
- the widgets' state in ipywidgets' embed shape, `{version_major, version_minor, state:
  {model_id: {model_name, model_module, model_module_version, state, buffers: [{path,
  encoding: "base64", data}]}}}`, as JSON in a `<script type="application/vnd.jupyter.widget-state+json">`;
- each widget class's ES module and CSS, once per class, as JSON;
- one `<div class="nw-export-view">` per widget;
- a small host (`neuronwidgets/js/host.js`) implementing the anywidget model interface over
  that state, importing each module from a Blob URL.

Every `<`, `>` and `&` inside the JSON is written as a `\\u` escape, so no data (a token such
as `</script><script>...`) can close the script element or open a comment. A Content
Security Policy allows only the host script (by hash), Blob-URL modules and inline styles,
and no network at all.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronwidgets.widgets import _assets

if TYPE_CHECKING:
    from anywidget import AnyWidget

#: DOMWidget and anywidget plumbing that a static page does not need.
_DROP = {
    "_esm", "_css", "layout", "_dom_classes", "tabbable", "tooltip", "_view_count",
    "_model_module", "_model_module_version", "_model_name", "_view_module", "_view_module_version", "_view_name",
}
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value: Any) -> str:
    """JSON safe to place inside a <script> element: no `<`, `>` or `&` left unescaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default)
    return "".join(_ESCAPES.get(ch, ch) for ch in text) if any(ch in text for ch in _ESCAPES) else text


def _default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot put a {type(value).__name__} in a static page")


def split_buffers(state: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(state without binary values, [{path, encoding: "base64", data}]), like ipywidgets' embed."""
    buffers: list[dict[str, Any]] = []

    def walk(value, path):
        if isinstance(value, (bytes, bytearray, memoryview)):
            buffers.append({"path": path, "encoding": "base64", "data": base64.b64encode(bytes(value)).decode("ascii")})
            return None
        if isinstance(value, dict):
            return {k: walk(v, [*path, k]) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, [*path, i]) for i, v in enumerate(value)]
        if isinstance(value, float) and value != value:  # NaN is not JSON
            return None
        return value

    return walk(state, []), buffers


def page(widgets: list, states: dict | None = None, title: str = "neuronwidgets") -> str:
    """The HTML text of a static page showing `widgets` in order."""
    states = states or {}
    embed: dict[str, Any] = {}
    modules: dict[str, dict[str, str]] = {}
    views = []
    uses_eval = False  # vega compiles its expressions with Function(): allowed only for charts
    for i, widget in enumerate(widgets):
        state = states.get(widget)
        if state is None:
            state = widget._export_state() if hasattr(widget, "_export_state") else widget.get_state()
        state = {k: v for k, v in state.items() if k not in _DROP}
        module_id = state.get("_anywidget_id") or f"{type(widget).__module__}.{type(widget).__name__}"
        state["_anywidget_id"] = module_id
        if module_id not in modules:
            esm, css = widget._esm, getattr(widget, "_css", "")
            modules[module_id] = {"esm": str(esm), "css": str(css)}
            entry = getattr(type(widget), "_entry", "")
            uses_eval = uses_eval or (bool(entry) and _assets.uses_vega(entry))
        model_id = f"nw-{i}-{getattr(widget, 'model_id', '') or i}"
        clean, buffers = split_buffers(state)
        embed[model_id] = {
            "model_name": "AnyModel",
            "model_module": "anywidget",
            "model_module_version": widget._model_module_version,
            "state": clean,
            "buffers": buffers,
        }
        views.append(model_id)
    host = _assets.host_js()
    digest = base64.b64encode(hashlib.sha256(host.encode("utf-8")).digest()).decode("ascii")
    csp = (
        "default-src 'none'; "
        f"script-src 'sha256-{digest}' blob:{' ' + chr(39) + 'unsafe-eval' + chr(39) if uses_eval else ''}; "
        "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )
    state_json = script_json({"version_major": 2, "version_minor": 0, "state": embed})
    modules_json = script_json(modules)
    divs = "\n".join(f'<div class="nw-export-view" data-model-id="{html.escape(v, quote=True)}"></div>' for v in views)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp, quote=True)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{margin:16px;background:#fff}.nw-export-view{margin:0 0 16px}"
        ".nw-export-error{color:#b00020;white-space:pre-wrap}</style>\n</head>\n<body>\n"
        f'<script type="application/vnd.jupyter.widget-state+json" id="nw-state">{state_json}</script>\n'
        f'<script type="application/json" id="nw-modules">{modules_json}</script>\n'
        f"{divs}\n"
        f'<script type="module">{host}</script>\n'
        "</body>\n</html>\n"
    )


def to_html(widgets: AnyWidget | Iterable[AnyWidget], path: str | Path, title: str | None = None, states: dict | None = None) -> Path:
    """Write `widgets` (one or a list) to `path` as one self-contained HTML file; returns the path.

    >>> nw.to_html([card, plot], "neuron.html")

    The page needs no kernel, no server and no network: open it from disk. What needs the
    kernel (re-running the model on an edited prompt) is precomputed where the widget knows
    how (see `NeuronExplorer.to_html`) and shown as unavailable otherwise.
    """
    items = list(widgets) if isinstance(widgets, Iterable) and not hasattr(widgets, "get_state") else [widgets]
    if not items:
        raise ValueError("nothing to export: pass a widget or a list of widgets")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(items, states, title or _title(items)), encoding="utf-8")
    return path


def _title(widgets: list) -> str:
    names = dict.fromkeys(type(w).__name__ for w in widgets)
    return "neuronwidgets: " + ", ".join(names)
