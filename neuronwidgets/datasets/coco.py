"""COCO-format annotation files on disk: captions, and instance masks usable as concepts."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from neuronwidgets.datasets.base import DESCRIBE_PROMPT, Sample, SampleList
from neuronwidgets.model.inputs import load_image


def rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools' rleFrString) into run lengths."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_segmentation(seg: list | dict, height: int, width: int) -> np.ndarray:
    """A bool [H, W] mask from a polygon list or an (un)compressed RLE."""
    if isinstance(seg, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        img = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(img)
        for poly in seg:
            if len(poly) >= 6:
                draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
        return np.asarray(img, bool)
    if isinstance(seg, dict) and "counts" in seg:
        counts = seg["counts"]
        if isinstance(counts, str):
            counts = rle_counts_from_string(counts)
        h, w = seg.get("size", [height, width])
        flat = np.zeros(h * w, bool)
        pos, value = 0, False
        for run in counts:
            flat[pos : pos + run] = value
            pos += run
            value = not value
        return flat.reshape((w, h)).T  # COCO's RLE runs down columns
    raise ValueError(f"unsupported COCO segmentation of type {type(seg).__name__}")


def coco(annotations: str | Path, images: str | Path | None = None, captions: str | Path | None = None,
         limit: int | None = None, prompt: str = DESCRIBE_PROMPT) -> SampleList:
    """Samples from a COCO instances file (masks per category name) and/or a captions file.

    `annotations` may be an instances file (with "categories") or a captions file; `captions`
    adds a captions file beside an instances one. Images load lazily from `images` (default:
    the annotation file's folder). Only categories present in an image get a mask key.
    """
    ann_path = Path(annotations).expanduser()
    if not ann_path.exists():
        raise FileNotFoundError(f"COCO annotation file not found: {str(ann_path)!r}")
    data = json.loads(ann_path.read_text())
    image_dir = Path(images).expanduser() if images else ann_path.parent
    if not image_dir.is_dir():
        raise FileNotFoundError(f"COCO image folder not found: {str(image_dir)!r}")
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    caps: dict[int, list[str]] = defaultdict(list)
    insts: dict[int, list[dict]] = defaultdict(list)
    for a in data.get("annotations", []):
        if "caption" in a:
            caps[a["image_id"]].append(a["caption"].strip())
        elif "segmentation" in a:
            insts[a["image_id"]].append(a)
    if captions:
        for a in json.loads(Path(captions).read_text()).get("annotations", []):
            caps[a["image_id"]].append(a["caption"].strip())
    samples = []
    for info in sorted(data["images"], key=lambda i: i["id"])[:limit]:
        file = image_dir / info["file_name"]
        h, w = info["height"], info["width"]
        masks = None
        if cats:
            masks = {}
            for a in insts.get(info["id"], []):
                name = cats[a["category_id"]]
                m = decode_segmentation(a["segmentation"], h, w)
                masks[name] = masks[name] | m if name in masks else m
            if masks:
                masks["background"] = ~np.any(np.stack(list(masks.values())), axis=0)
        samples.append(
            Sample(
                id=str(info["id"]),
                prompt=prompt,
                caption=caps[info["id"]][0] if caps.get(info["id"]) else None,
                masks=masks,
                meta={"path": str(file), "captions": caps.get(info["id"], []), "concepts": sorted(cats.values())},
                load_image=lambda file=file: load_image(file),
            )
        )
    if not samples:
        raise ValueError(f"{str(ann_path)!r} lists no images")
    spec = f"coco:annotations={ann_path.resolve()},images={image_dir.resolve()}"
    spec += (f",captions={Path(captions).resolve()}" if captions else "") + (f",limit={limit}" if limit else "")
    return SampleList(samples, name=f"coco:{ann_path.name}", fingerprint=spec)


def hf_dataset(ds: Any, image_column: str = "image", caption_column: str | None = None, prompt: str = DESCRIBE_PROMPT) -> SampleList:
    """Samples from a Hugging Face `datasets.Dataset` (images decoded lazily, row by row)."""
    if image_column not in ds.column_names:
        raise KeyError(f"column {image_column!r} not in the dataset; its columns are {ds.column_names}")
    fp = getattr(ds, "_fingerprint", None) or f"{len(ds)}"
    captions = list(ds[caption_column]) if caption_column else [None] * len(ds)  # one column read, no images
    samples = [
        Sample(
            id=f"hf-{i}",
            prompt=prompt,
            caption=captions[i],
            load_image=lambda i=i: load_image(ds[i][image_column]),
        )
        for i in range(len(ds))
    ]
    return SampleList(samples, name="hf", fingerprint=f"hf:{fp}")
