"""Turn what a user hands us (PIL image, numpy array, file path) into an RGB PIL image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

#: What `load_image` accepts (and so every `image` argument of a Session).
ImageLike = Image.Image | np.ndarray | str | os.PathLike


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image, an array (H, W[, 3|4], uint8 or float in 0..1) or a path."""
    rgb = _as_rgb(image)
    if 0 in rgb.size:
        raise ValueError(f"the image is empty ({rgb.size[0]}x{rgb.size[1]} pixels): nothing to look at")
    return rgb


def _as_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return Image.fromarray(arr).convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {str(path)!r}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read {str(path)!r} as an image ({err}); is it a PNG/JPEG file?") from err
    raise TypeError(f"expected a PIL image, a numpy array or a file path; got {type(image).__name__}")
