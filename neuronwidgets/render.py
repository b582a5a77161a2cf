"""Drawing neurons for people and for chat models: patch overlays, labelled patch grids, token lists.

One place for every picture and token list that prompts, cards and static exports show, so
they all agree. Activations are shown on the 0-10 scale of `records.discretize`; the
overlay blends each pixel with white by level/10 (the neuron-explainer convention: what
the neuron ignores fades away), and the plain image goes beside it for context.

Images are drawn the way the model saw them: a square centre crop (LLaVA's processor
resizes the short side and crops the centre, so the patch grid covers that square).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from neuronwidgets.records import ActivationRecord, discretize

__all__ = [
    "discretize",
    "model_view",
    "upscale",
    "overlay",
    "side_by_side",
    "exemplar",
    "record_exemplar",
    "patch_grid",
    "png_bytes",
    "data_url",
    "show_token",
    "token_lines",
    "tokens_html",
]


# --- images ---------------------------------------------------------------------------------
def model_view(image: Image.Image, crop: bool = True) -> Image.Image:
    """The image as RGB, centre-cropped to a square when `crop` (the region the patch grid covers)."""
    image = image.convert("RGB")
    if not crop or image.width == image.height:
        return image
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def upscale(image: Image.Image, min_side: int = 224) -> Image.Image:
    """Enlarge a small image by a whole factor (nearest neighbour, crisp pixels) until its short side reaches `min_side`."""
    short = min(image.size)
    if short >= min_side or short == 0:
        return image
    factor = -(-min_side // short)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _level_mask(levels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [rows, cols] grid of 0-10 levels stretched over an image of `size` (w, h): float [h, w] in 0..1."""
    grid = np.clip(np.asarray(levels, np.float64), 0, 10) / 10.0
    img = Image.fromarray(np.round(grid * 255).astype(np.uint8)).resize(size, Image.NEAREST)
    return np.asarray(img, np.float64) / 255.0


def overlay(image: Image.Image, levels: np.ndarray, style: str = "white", cmap: str = "inferno", alpha: float = 0.6,
            crop: bool = True) -> Image.Image:
    """The image with a [rows, cols] grid of 0-10 levels drawn over it.

    style="white": each pixel blended with white by level/10 (active patches clear, the rest
    faded); style="heat": a colour map blended over the image, stronger where the level is higher.
    """
    base = model_view(image, crop)
    pixels = np.asarray(base, np.float64)
    a = _level_mask(levels, base.size)[..., None]
    if style == "white":
        out = 255.0 + (pixels - 255.0) * a
    elif style == "heat":
        from matplotlib import colormaps

        colours = colormaps[cmap](a[..., 0])[..., :3] * 255.0
        out = pixels * (1 - alpha * a) + colours * (alpha * a)
    else:
        raise ValueError(f"style must be 'white' or 'heat', got {style!r}")
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), "RGB")


def side_by_side(*images: Image.Image, gap: int = 6, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Images in a row, top-aligned, with a gap between them."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    out = Image.new("RGB", (width, height), background)
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + gap
    return out


def exemplar(image: Image.Image, patch_map: np.ndarray, max_value: float, min_side: int = 224, style: str = "white",
             crop: bool = True) -> Image.Image:
    """One exemplar as a picture: the plain image, and beside it the same image with its patch activations (framed in grey)."""
    levels = discretize(patch_map, max_value)
    plain = upscale(model_view(image, crop), min_side)
    lit = upscale(overlay(image, levels, style=style, crop=crop), min_side)
    frame = (150, 150, 150)
    return side_by_side(ImageOps.expand(plain, 1, frame), ImageOps.expand(lit, 1, frame))


def record_exemplar(record: ActivationRecord, image: Image.Image, max_value: float, **kwargs: Any) -> Image.Image:
    """`exemplar` for an ActivationRecord (its patch map) and the image of its sample."""
    return exemplar(image, record.patch_map, max_value, **kwargs)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def patch_grid(image: Image.Image, rows: int, cols: int, min_side: int = 384, min_cell: int = 24, crop: bool = True,
               color: tuple[int, int, int] = (255, 0, 255)) -> Image.Image:
    """The image with its patch grid drawn and labelled: column numbers along the top, row numbers down the left."""
    base = model_view(image, crop)
    side = max(min_side, min_cell * max(rows, cols))
    scale = side / max(base.size)
    w, h = max(cols, round(base.width * scale)), max(rows, round(base.height * scale))
    body = base.resize((w, h), Image.NEAREST if scale >= 1 else Image.BILINEAR)
    font = _font(max(9, min(16, int(min(w / cols, h / rows) * 0.45))))
    margin = int(font.size * 2.2) if hasattr(font, "size") else 24
    out = Image.new("RGB", (w + margin + 1, h + margin + 1), (255, 255, 255))
    out.paste(body, (margin, margin))
    draw = ImageDraw.Draw(out)
    for c in range(cols + 1):
        x = margin + round(c * w / cols)
        draw.line([(x, margin), (x, margin + h)], fill=color, width=1)
    for r in range(rows + 1):
        y = margin + round(r * h / rows)
        draw.line([(margin, y), (margin + w, y)], fill=color, width=1)
    for c in range(cols):
        x = margin + (c + 0.5) * w / cols
        draw.text((x, margin / 2), str(c), fill=(0, 0, 0), font=font, anchor="mm")
    for r in range(rows):
        y = margin + (r + 0.5) * h / rows
        draw.text((margin / 2, y), str(r), fill=(0, 0, 0), font=font, anchor="mm")
    return out


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes; the same pixels always give the same bytes (so requests hash stably)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def data_url(image: Image.Image) -> str:
    """The image as a `data:image/png;base64,...` URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


# --- tokens -------------------------------------------------------------------------------------
def show_token(token: str) -> str:
    """A token on one line: newlines, tabs and carriage returns written as escapes, nothing dropped."""
    return str(token).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def token_lines(tokens: Sequence[str], levels: Sequence[int]) -> str:
    """One `token<TAB>level` line per token (the neuron-explainer format)."""
    if len(tokens) != len(levels):
        raise ValueError(f"{len(tokens)} tokens but {len(levels)} levels")
    return "\n".join(f"{show_token(t)}\t{int(v)}" for t, v in zip(tokens, levels))


def tokens_html(tokens: Sequence[str], levels: Sequence[int], color: tuple[int, int, int] = (220, 40, 40)) -> str:
    """Tokens as HTML spans shaded by level (0-10), every token escaped, the level on hover."""
    if len(tokens) != len(levels):
        raise ValueError(f"{len(tokens)} tokens but {len(levels)} levels")
    r, g, b = color
    spans = []
    for t, v in zip(tokens, levels):
        v = int(np.clip(v, 0, 10))
        spans.append(
            f'<span class="nw-token" title="{v}" style="background: rgba({r}, {g}, {b}, {v / 10:.1f}); '
            f'white-space: pre">{html.escape(str(t), quote=True)}</span>'
        )
    return '<span class="nw-tokens">' + "".join(spans) + "</span>"
