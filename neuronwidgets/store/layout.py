"""What an index folder holds and what identifies a collection: file names, manifest keys, format version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

#: 4: histogram edges at 2^e and 1.5 * 2^e; maps for the best map_k top samples only. 5: code histograms of every top sample.
FORMAT_VERSION = 5
#: The versions this neuronwidgets reads (a version-4 folder's categories read the kept maps as well as the histograms).
READABLE_VERSIONS = (4, 5)


MANIFEST = "manifest.json"


class IndexFormatError(ValueError):
    """A NeuronIndex folder is missing a file, is corrupt, or does not match what was expected."""


# --- saving and loading the state ---------------------------------------------------------
def layer_file(path: Path, layer: int) -> Path:
    return path / "layers" / f"layer_{layer:03d}.safetensors"


EXPLANATIONS = "explanations.parquet"


#: What identifies a collection: an index folder holding the same values holds the same index.
COLLECTION_KEYS = ("format_version", "model", "site", "layers", "n_neurons", "grid", "text", "top_k", "token_k", "random_k", "map_k",
                   "map_bits", "max_text_tokens", "batch_size", "seed", "dataset", "positions", "hist_edges", "prompts")


#: Keys that folders written by earlier versions may lack (a merge left out positions; prompts came later): taken as matching.
LENIENT_KEYS = ("prompts", "positions")


def positions_digest(positions: Sequence[int]) -> str:
    """The manifest's `positions`: which dataset positions a collection covers, in its order."""
    return hashlib.sha1(json.dumps([int(p) for p in positions]).encode()).hexdigest()


def collection_differences(found: dict, new: dict, keys: Sequence[str] = COLLECTION_KEYS) -> list[str]:
    """The identifying keys in which two manifests differ (one a folder's, `found`)."""
    return [k for k in keys if found.get(k) != new.get(k) and not (k in LENIENT_KEYS and k not in found)]


#: What every manifest holds (the readers rely on these).
MANIFEST_KEYS = ("model", "site", "layers", "n_neurons", "grid", "n_patches", "text", "top_k", "token_k", "random_k", "map_k",
                 "map_bits", "max_text_tokens", "dataset", "random_samples", "n_samples")


def writing_folder(path: Path) -> Path:
    """Where a new index for `path` is written before it moves in."""
    path = Path(path).expanduser().absolute()  # '.' and '..' have no name of their own
    return path.with_name(path.name + ".writing")


def dataset_entry(fingerprint: str, size: int) -> dict:
    """The manifest's `dataset`: its fingerprint, the spec that rebuilds it (where there is one) and its size."""
    spec = fingerprint if isinstance(fingerprint, str) and fingerprint.split(":", 1)[0] in ("shapes", "folder", "coco") else None
    return {"fingerprint": fingerprint, "spec": spec, "size": int(size)}


def prompts_digest(samples: Iterable) -> str:
    """A digest of every sample's prompt, in order: the prompt shapes every activation, and a dataset's
    fingerprint does not cover prompts set on its samples (the command line's --prompt)."""
    digest = hashlib.sha1()
    for sample in samples:
        digest.update(str(sample.prompt).encode() + b"\0")
    return digest.hexdigest()
