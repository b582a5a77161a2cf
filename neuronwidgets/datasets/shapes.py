"""The Shapes world: small images of one to three coloured shapes, with captions, questions and masks.

Each image is a `grid` x `grid` board of square cells (by default 64 x 64 pixels, 4 x 4
cells of 16 pixels, the toy model's patch grid). One to three shapes sit in distinct cells,
each drawn wholly inside its cell at a random size and offset, on a light, mildly noisy
grey background. A colour and a shape appear at most once per image, so every question
has exactly one right answer.

Sample i of `shapes(n, seed)` depends only on (seed, i), never on n.

Caption grammar (objects in reading order: by row, then by column)::

    caption  := object (relation object)*
    object   := "a" COLOR SHAPE
    relation := "left of"      when the next object is in the same row
              | "above"        when the next object is in a lower row

    "a red circle"
    "a red circle above a blue square"
    "a green triangle left of a yellow circle above a purple square"

Questions (`QA.kind`): "color" (What color is the circle? -> red), "shape" (Which shape is
red? -> circle), "count" (How many shapes are there? -> two) and "position"
(Where is the red circle? -> top left: the quadrant of the object's cell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from neuronwidgets.datasets.base import (
    DESCRIBE_PROMPT,
    PROMPT_TEMPLATE,
    QA,
    Sample,
    SampleList,
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 50, 180),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")
MAX_OBJECTS = 3
KINDS: tuple[str, ...] = ("color", "shape", "count", "position")

COLOR_QUESTION = "What color is the {shape}?"
SHAPE_QUESTION = "Which shape is {color}?"
COUNT_QUESTION = "How many shapes are there?"
POSITION_QUESTION = "Where is the {color} {shape}?"

SHAPES_WORDS: tuple[str, ...] = tuple(
    sorted(
        set(
            "USER ASSISTANT Could you describe the image "
            "What Which color is shape How many shapes are there Where "
            "a above left of top bottom right".split()
        )
        | set(COLORS)
        | set(SHAPES)
        | set(COUNT_WORDS)
    )
)

_ZEROS_CACHE: dict[tuple[int, int], np.ndarray] = {}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn shape: its colour, kind, grid cell and pixel bounding box (x0, y0, x1, y1), inclusive."""

    color: str
    shape: str
    row: int
    col: int
    bbox: tuple[int, int, int, int]


def _zeros(h: int, w: int) -> np.ndarray:
    """A shared read-only all-False mask (absent concepts), so big datasets stay small."""
    key = (h, w)
    if key not in _ZEROS_CACHE:
        z = np.zeros((h, w), dtype=bool)
        z.setflags(write=False)
        _ZEROS_CACHE[key] = z
    return _ZEROS_CACHE[key]


def position_words(row: int, col: int, grid: int) -> str:
    """The quadrant of a cell: "top left", "top right", "bottom left" or "bottom right"."""
    vertical = "top" if row < grid / 2 else "bottom"
    horizontal = "left" if col < grid / 2 else "right"
    return f"{vertical} {horizontal}"


def caption_for(objects: list[ShapeObject]) -> str:
    """The caption of a list of objects (sorted into reading order here)."""
    objs = sorted(objects, key=lambda o: (o.row, o.col))
    words = [f"a {objs[0].color} {objs[0].shape}"]
    for prev, nxt in zip(objs, objs[1:]):
        words.append("left of" if nxt.row == prev.row else "above")
        words.append(f"a {nxt.color} {nxt.shape}")
    return " ".join(words)


def questions_for(objects: list[ShapeObject], grid: int) -> list[QA]:
    """Every question the world asks about these objects, each with its one right answer."""
    objs = sorted(objects, key=lambda o: (o.row, o.col))
    out: list[QA] = []

    def qa(question: str, answer: str, kind: str) -> None:
        out.append(QA(question, answer, kind, PROMPT_TEMPLATE.format(question=question)))

    for o in objs:
        qa(COLOR_QUESTION.format(shape=o.shape), o.color, "color")
    for o in objs:
        qa(SHAPE_QUESTION.format(color=o.color), o.shape, "shape")
    qa(COUNT_QUESTION, COUNT_WORDS[len(objs) - 1], "count")
    for o in objs:
        qa(POSITION_QUESTION.format(color=o.color, shape=o.shape), position_words(o.row, o.col, grid), "position")
    return out


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=1)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def render(
    seed: int,
    index: int,
    image_size: int = 64,
    grid: int = 4,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    min_size: float = 0.6,
) -> tuple[np.ndarray, np.ndarray, list[ShapeObject]]:
    """Draw sample `index` of world `seed`.

    Returns the image (uint8 [H, W, 3]), a label map (uint8 [H, W]: 0 background, k the
    k-th object in reading order) and the objects in reading order. `min_size` is the
    smallest shape as a share of its cell's side (the largest fills the cell).
    """
    if image_size % grid:
        raise ValueError(f"image_size {image_size} is not a multiple of grid {grid}")
    if not 1 <= min_objects <= max_objects <= min(MAX_OBJECTS, len(SHAPES), len(COLORS), grid * grid):
        raise ValueError(f"bad object counts {min_objects}..{max_objects}")
    rng = np.random.default_rng([seed, index])
    cell = image_size // grid
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(grid * grid, size=n, replace=False)
    colors = rng.choice(len(COLORS), size=n, replace=False)
    kinds = rng.choice(len(SHAPES), size=n, replace=False)
    color_names = list(COLORS)

    # Light grey background with a slight tint and mild per-pixel noise.
    base = rng.uniform(205, 240) + rng.uniform(-6, 6, size=3)
    img = base[None, None, :] + rng.normal(0, 5, size=(image_size, image_size, 3))

    objects: list[ShapeObject] = []
    for c, k, ci in zip(cells, kinds, colors):
        row, col = divmod(int(c), grid)
        lo = max(3, int(round(min_size * cell)))
        side = int(rng.integers(lo, cell + 1))
        ox = int(rng.integers(0, cell - side + 1))
        oy = int(rng.integers(0, cell - side + 1))
        x0, y0 = col * cell + ox, row * cell + oy
        objects.append(ShapeObject(color_names[ci], SHAPES[k], row, col, (x0, y0, x0 + side - 1, y0 + side - 1)))
    objects.sort(key=lambda o: (o.row, o.col))

    labels = np.zeros((image_size, image_size), dtype=np.uint8)
    for k, o in enumerate(objects, start=1):
        layer = Image.new("1", (image_size, image_size), 0)
        _draw_shape(ImageDraw.Draw(layer), o.shape, o.bbox)
        m = np.asarray(layer, dtype=bool)
        rgb = np.asarray(COLORS[o.color], dtype=np.float64) + rng.uniform(-15, 15, size=3)
        img[m] = rgb + rng.normal(0, 3, size=(int(m.sum()), 3))
        labels[m] = k
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return image, labels, objects


def masks_for(labels: np.ndarray, objects: list[ShapeObject]) -> dict[str, np.ndarray]:
    """Boolean pixel masks for every colour, every shape and the background (absent ones all False)."""
    h, w = labels.shape
    masks: dict[str, np.ndarray] = {name: _zeros(h, w) for name in list(COLORS) + list(SHAPES)}
    for k, o in enumerate(objects, start=1):
        m = labels == k
        masks[o.color] = m
        masks[o.shape] = m
    masks["background"] = labels == 0
    return masks


def make_sample(seed: int, index: int, **kwargs: Any) -> Sample:
    """Sample `index` of world `seed` (same keyword arguments as `render`)."""
    grid = kwargs.get("grid", 4)
    image, labels, objects = render(seed, index, **kwargs)
    return Sample(
        id=f"shapes-{seed}-{index:06d}",
        image=Image.fromarray(image, "RGB"),
        prompt=DESCRIBE_PROMPT,
        caption=caption_for(objects),
        qa=questions_for(objects, grid),
        masks=masks_for(labels, objects),
        meta={
            "seed": seed,
            "index": index,
            "grid": grid,
            "objects": [
                {"color": o.color, "shape": o.shape, "row": o.row, "col": o.col, "bbox": list(o.bbox)} for o in objects
            ],
        },
    )


def shapes(
    n: int = 2000,
    seed: int = 0,
    image_size: int = 64,
    grid: int = 4,
    min_objects: int = 1,
    max_objects: int = MAX_OBJECTS,
    min_size: float = 0.6,
    start: int = 0,
) -> SampleList:
    """`n` Shapes samples (indices start .. start+n-1) of world `seed`, deterministic.

    >>> data = shapes(n=2000, seed=0)
    >>> data[0].caption, data[0].qa[0].question, data[0].qa[0].answer
    """
    if n < 0 or start < 0:
        raise ValueError(f"n and start count samples, so 0 or more; got n={n}, start={start}")
    if seed < 0:
        raise ValueError(f"seed must be 0 or more, got {seed}")
    min_size = float(min_size)  # 1 and 1.0 draw the same world: one fingerprint
    kwargs = dict(image_size=image_size, grid=grid, min_objects=min_objects, max_objects=max_objects, min_size=min_size)
    samples = [make_sample(seed, i, **kwargs) for i in range(start, start + n)]
    parts = [f"n={n}", f"seed={seed}"]
    defaults = dict(image_size=64, grid=4, min_objects=1, max_objects=MAX_OBJECTS, min_size=0.6, start=0)
    given = dict(kwargs, start=start)
    parts += [f"{k}={v}" for k, v in given.items() if v != defaults[k]]
    return SampleList(samples, name="shapes", fingerprint="shapes:" + ",".join(parts))


__all__ = [
    "COLORS",
    "SHAPES",
    "SHAPES_WORDS",
    "COUNT_WORDS",
    "KINDS",
    "ShapeObject",
    "shapes",
    "make_sample",
    "render",
    "caption_for",
    "questions_for",
    "masks_for",
    "position_words",
]
