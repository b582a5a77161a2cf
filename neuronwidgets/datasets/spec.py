"""Dataset specs: short strings that name a dataset and rebuild it ("shapes:n=2000,seed=0", "folder:PATH")."""

from __future__ import annotations

import re

_SLICE = re.compile(r"^(?P<base>.*)\[(?P<a>-?\d*):(?P<b>-?\d*):?(?P<c>-?\d*)\]$")


def parse_args(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        if "=" not in part:
            raise ValueError(f"expected key=value in dataset spec, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = int(v) if re.fullmatch(r"-?\d+", v.strip()) else v.strip()
    return out


def _call(fn, spec: str, args: dict):
    """fn(**args), each value read as its parameter's default type (int, float), or a clear error about the spec."""
    import inspect

    params = inspect.signature(fn).parameters
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"dataset spec {spec!r}: unknown key(s) {unknown}; {fn.__name__} takes {', '.join(params)}")
    for key, value in args.items():
        kind = type(params[key].default)
        if kind in (int, float) and not isinstance(value, (int, float)):
            try:
                args[key] = kind(value)
            except ValueError:
                raise ValueError(f"dataset spec {spec!r}: {key} must be a number, got {value!r}") from None
    return fn(**args)


def from_spec(spec: str):
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
