"""Dataset specs: short strings that name a dataset and rebuild it ("shapes:n=2000,seed=0", "folder:PATH")."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import SampleList

import re

_SLICE = re.compile(r"^(?P<base>.*)\[(?P<a>-?\d*):(?P<b>-?\d*):?(?P<c>-?\d*)\]$")


def parse_args(text: str) -> dict[str, str]:
    """'n=20,seed=0' -> {'n': '20', 'seed': '0'}: values stay text (`_call` reads them by the parameter's type)."""
    out = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise ValueError(f"expected key=value in dataset spec, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _call(fn, spec: str, args: dict[str, str]):
    """fn(**args), each value read by its parameter's annotation (int, float; text otherwise), or a clear error about the spec."""
    import inspect

    params = inspect.signature(fn).parameters
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"dataset spec {spec!r}: unknown key(s) {unknown}; {fn.__name__} takes {', '.join(params)}")
    values = {}
    for key, text in args.items():
        kinds = set(re.findall(r"\w+", str(params[key].annotation)))  # e.g. "int | None", "str | Path"
        try:
            values[key] = float(text) if "float" in kinds else int(text) if "int" in kinds else text
        except ValueError:
            what = "a number" if "float" in kinds else "a whole number"
            raise ValueError(f"dataset spec {spec!r}: {key} must be {what}, got {text!r}") from None
    return fn(**values)


def from_spec(spec: str) -> SampleList:
    """Rebuild a dataset from its spec; a trailing [a:b] slices it."""
    m = _SLICE.match(spec)
    if m:
        base = from_spec(m.group("base"))
        to_int = lambda s: int(s) if s else None  # noqa: E731
        return base[slice(to_int(m.group("a")), to_int(m.group("b")), to_int(m.group("c")))]
    kind, _, rest = spec.partition(":")
    if kind == "shapes":
        from neuronwidgets.datasets.shapes import shapes

        return _call(shapes, spec, parse_args(rest))
    if kind == "folder":
        from neuronwidgets.datasets.folder import image_folder

        return image_folder(rest)
    if kind == "coco":
        from neuronwidgets.datasets.coco import coco

        return _call(coco, spec, parse_args(rest))
    raise ValueError(f"unknown dataset spec {spec!r}; expected 'shapes:n=N,seed=S', 'folder:PATH' or 'coco:annotations=FILE,images=DIR'")
