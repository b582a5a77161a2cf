"""The widgets' front-end code: plain ES modules in `neuronwidgets/js/`, linked into one module per widget.

No Node, no build step. anywidget loads a widget's `_esm` from a string, where relative
imports cannot resolve, so `link(entry)` concatenates an entry module with the sibling
modules it imports, under strict rules that keep this a few lines of Python:

- a sibling import is one line: `import { a, b } from "./name.js";`
- a module exports with `export function|const|class|let NAME`; only the entry has `export default`
- top-level names are unique across all files (checked here; the browser would refuse duplicates)

Modules that draw charts reference `vegaEmbed` without importing it; the linked source then
goes through `vl_convert.javascript_bundle`, which bundles vega, vega-lite and vega-embed
from the vl-convert-python package (the way altair's `JupyterChart.enable_offline()` works):
pinned by the installed vl-convert-python, no CDN, nothing fetched at run time.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

JS_DIR = Path(__file__).resolve().parent.parent / "js"
CSS_FILE = JS_DIR / "widgets.css"

_IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"\./([\w-]+\.js)";[ \t]*$', re.M)
_ANY_IMPORT = re.compile(r"^\s*import\b", re.M)
_EXPORT = re.compile(r"^export\s+(?=(?:async\s+)?function\b|const\b|let\b|class\b)", re.M)
_TOP_NAME = re.compile(r"^(?:export\s+)?(?:async\s+)?(?:function\*?|const|let|class)\s+([A-Za-z_$][\w$]*)", re.M)
_USES_VEGA = re.compile(r"\bvegaEmbed\s*\(")


class LinkError(ValueError):
    """A front-end module breaks the linking rules (see the module docstring)."""


def _read(name: str) -> str:
    path = JS_DIR / name
    if not path.is_file():
        raise LinkError(f"front-end module {name!r} not found in {JS_DIR}")
    return path.read_text(encoding="utf-8")


def _deps(source: str) -> list[str]:
    return [m.group(2) for m in _IMPORT.finditer(source)]


def _strip_imports(name: str, source: str) -> str:
    body = _IMPORT.sub("", source)
    if _ANY_IMPORT.search(body):
        raise LinkError(f"{name}: only sibling imports of the form `import {{ a }} from \"./x.js\";` are allowed")
    return body


def modules_for(entry: str) -> list[str]:
    """The files linked for `entry`, dependencies first (depth-first, each once)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise LinkError(f"import cycle through {name}")
        visiting.add(name)
        for dep in _deps(_read(name)):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    visit(entry)
    return order


def _link_source(entry: str) -> tuple[str, bool]:
    names = modules_for(entry)
    parts, seen, vega = [], {}, False
    for name in names:
        source = _read(name)
        for top in _TOP_NAME.findall(source):
            if top in seen:
                raise LinkError(f"top-level name {top!r} is defined in both {seen[top]} and {name}")
            seen[top] = name
        body = _strip_imports(name, source)
        if name != entry:
            if "export default" in body:
                raise LinkError(f"{name} is imported by {entry} and must not have a default export")
            body = _EXPORT.sub("", body)
        elif "export default" not in body:
            raise LinkError(f"entry module {entry} has no default export")
        vega = vega or bool(_USES_VEGA.search(body))
        parts.append(f"// ---- {name} ----\n{body.strip()}\n")
    return "\n".join(parts), vega


@functools.lru_cache(maxsize=None)
def vega_lite_version() -> str:
    """The vega-lite version altair targets, in vl-convert's spelling (e.g. 'v6_4')."""
    try:
        from altair.utils._importers import vl_version_for_vl_convert

        return vl_version_for_vl_convert()
    except Exception:  # altair moved it: let vl-convert pick its default
        return ""


@functools.lru_cache(maxsize=None)
def _bundle(source: str) -> str:
    import vl_convert

    version = vega_lite_version()
    return vl_convert.javascript_bundle(source, vl_version=version) if version else vl_convert.javascript_bundle(source)


def esm(entry: str) -> str:
    """The one ES module a widget ships: `entry` linked with its siblings (and vega, if it draws charts)."""
    source, vega = _link_source(entry)
    return _bundle(source) if vega else source


def uses_vega(entry: str) -> bool:
    """Whether `entry`'s module draws charts (and so carries vega, which needs `Function()`)."""
    return _link_source(entry)[1]


def css() -> str:
    return CSS_FILE.read_text(encoding="utf-8")


def host_js() -> str:
    """The static-export host (see export.py)."""
    return _read("host.js")
