"""Where a checkpoint comes from: a local folder or a hub id already cached; nothing is downloaded unless asked."""

from __future__ import annotations

from pathlib import Path

#: from_pretrained's keyword arguments that say where a checkpoint is: the processor gets them too.
HUB_KWARGS = ("local_files_only", "cache_dir", "revision", "token", "trust_remote_code", "subfolder", "force_download", "proxies")


def looks_like_path(name_or_path) -> bool:
    """A folder path rather than a hub id ('owner/name'): a Path, or text that starts like a path or has more parts."""
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def model_source(name_or_path) -> str:
    """What transformers is given: a path with ~ expanded, a hub id as it is."""
    return str(Path(name_or_path).expanduser()) if looks_like_path(name_or_path) else str(name_or_path)
