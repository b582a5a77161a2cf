"""Where the explorer's content comes from: explanations, categories, a simulator and the images to pick from."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image

from neuronwidgets.constants import CATEGORIES
from neuronwidgets.store.layout import IndexFormatError
from neuronwidgets.widgets._base import png

if TYPE_CHECKING:
    from neuronwidgets.datasets.base import Sample
    from neuronwidgets.explain.base import NeuronSimulator
    from neuronwidgets.explain.explanation import Explanation
    from neuronwidgets.explain.scoring import ScoreResult
    from neuronwidgets.model.inputs import ImageLike
    from neuronwidgets.store.index import NeuronIndex

    #: Explanations as the explorer takes them: a table like `index.explanations()`, Explanations, ScoreResults or rows.
    ExplanationsLike = pd.DataFrame | Iterable[Explanation | ScoreResult | Mapping[str, Any]] | None

THUMB_SIDE = 48
#: Errors that mean "this optional source is unavailable": the explorer goes on without it.
UNAVAILABLE = (IndexFormatError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def is_missing(value: object) -> bool:
    """None, NaN or pd.NA: a table cell with nothing in it."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def explanation_table(index: NeuronIndex | None, explanations: ExplanationsLike) -> dict[tuple[int, int], dict]:
    """{(layer, neuron): row} from a table like `index.explanations()`, Explanations or ScoreResults (default: the index's)."""
    if explanations is None and index is not None and hasattr(index, "explanations"):
        try:
            explanations = index.explanations()
        except UNAVAILABLE:  # an unreadable table: explore without explanations
            explanations = None
    out: dict[tuple[int, int], dict] = {}
    if explanations is None:
        return out
    for row in _rows(explanations):
        if not is_missing(row.get("error")) and not row.get("text"):
            continue  # a failed explanation: nothing to show
        out[(int(row["layer"]), int(row["neuron"]))] = {k: (None if is_missing(v) else v) for k, v in row.items()}
    return out


def _rows(explanations) -> list[dict]:
    if isinstance(explanations, pd.DataFrame):
        return explanations.to_dict("records")
    rows = []
    for item in explanations:
        exp = getattr(item, "explanation", None)
        if exp is not None and hasattr(item, "score"):  # a ScoreResult
            row = exp.to_dict() if hasattr(exp, "to_dict") else dict(vars(exp))
            row.update({"score": item.score, "baseline": item.baseline,
                        **{f"score_{k}": v for k, v in getattr(item, "scores", {}).items()}})
        elif hasattr(item, "to_dict"):
            row = item.to_dict()
        else:
            row = dict(item)
        rows.append(row)
    return rows


def category_table(index: NeuronIndex | None, explanations: dict[tuple[int, int], dict]) -> dict[tuple[int, int], str]:
    """{(layer, neuron): category}: an explanation's own category first, then the index's (paper rule)."""
    out = {(k[0], k[1]): str(v["category"]) for k, v in explanations.items() if v.get("category")}
    if index is None or not hasattr(index, "categories"):
        return out
    try:
        from neuronwidgets.explain.data import categories

        table = categories(index)
    except UNAVAILABLE:
        return out
    for a, b, c in zip(table["layer"], table["neuron"], table["category"]):
        out.setdefault((int(a), int(b)), str(c))
    return out


def category_names(categories: dict[tuple[int, int], str]) -> list[str]:
    """The categories present, in the canonical order, then any others."""
    found = set(categories.values())
    return [c for c in CATEGORIES if c in found] + sorted(found - set(CATEGORIES))


def pick_simulator(simulator: NeuronSimulator | str | None, dataset: Sequence[Sample] | None) -> NeuronSimulator | None:
    """The simulator to use: as given, or for "auto" a ConceptSimulator when the dataset has concept masks."""
    if simulator != "auto":
        return simulator
    try:
        has_masks = dataset is not None and len(dataset) > 0 and getattr(dataset[0], "masks", None)
    except UNAVAILABLE:
        has_masks = False
    if not has_masks:
        return None
    from neuronwidgets.explain import ConceptSimulator

    return ConceptSimulator(dataset)


def initial_images(dataset: Sequence[Sample] | None, image: ImageLike | None, n_images: int) -> list[tuple[Image.Image, Any, str]]:
    """(picture, sample or None, label) for the image picker: `image` first, then the dataset's first `n_images`."""
    from neuronwidgets.model.inputs import load_image

    out = []
    if image is not None:
        out.append((load_image(image), None, "your image"))
    if dataset is not None:
        for i in range(min(int(n_images), len(dataset))):
            sample = dataset[i]
            pic = sample.get_image() if hasattr(sample, "get_image") else sample.image
            label = getattr(sample, "caption", None) or str(getattr(sample, "id", i))
            out.append((load_image(pic), sample, f"{getattr(sample, 'id', i)}: {label}"))
    if not out:
        raise ValueError("nothing to show: pass image=..., or an index with a dataset attached (index.attach(data)), or dataset=...")
    return out


def read_upload(data: bytes, name: str) -> Image.Image:
    """An uploaded file as an RGB picture, or a ValueError that names the file."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"could not read {name!r} as an image ({err})") from err


def first_neuron(explanations: dict, categories: dict, layers: list[int]) -> tuple[int, int]:
    """The neuron to open on: the best-scored explanation, else the first active neuron, else the middle layer's first."""
    ranked = sorted((k for k in explanations if k[0] in layers), key=lambda k: (-(explanations[k].get("score") or -2.0), k))
    if ranked:
        return ranked[0]
    active = [k for k, c in sorted(categories.items()) if c not in ("inactive", "unactivated") and k[0] in layers]
    return active[0] if active else (layers[len(layers) // 2], 0)


def default_prompt(template: str, sample: Sample | None) -> str:
    """The sample's first question, or its prompt, or a generic question in the model's template."""
    if sample is not None and getattr(sample, "qa", None):
        return sample.qa[0].prompt
    if sample is not None and getattr(sample, "prompt", None):
        return sample.prompt
    return template.format(question="What is in the image?")


def suggestions(sample: Sample | None, prompt: str) -> list[str]:
    """Prompts offered beside the prompt box: the current one and the sample's questions (each once)."""
    out = [prompt]
    if sample is not None:
        out += [qa.prompt for qa in (getattr(sample, "qa", None) or [])[:4]]
        if getattr(sample, "prompt", None):
            out.append(sample.prompt)
    return list(dict.fromkeys(out))


def thumb(image: Image.Image) -> bytes:
    """A small PNG for the image picker."""
    return png(image, THUMB_SIDE)
