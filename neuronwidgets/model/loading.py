"""Where a checkpoint comes from: a local folder or a hub id already cached; nothing is downloaded unless asked."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

#: from_pretrained's keyword arguments that say where a checkpoint is: the processor gets them too.
HUB_KWARGS = ("local_files_only", "cache_dir", "revision", "token", "trust_remote_code", "subfolder", "force_download", "proxies")


def looks_like_path(name_or_path: str | Path) -> bool:
    """A folder path rather than a hub id ('owner/name'): a Path, or text that starts like a path or has more parts."""
    text = str(name_or_path)
    return isinstance(name_or_path, Path) or text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text


def model_source(name_or_path: str | Path) -> str:
    """What transformers is given: a path with ~ expanded, a hub id as it is."""
    return str(Path(name_or_path).expanduser()) if looks_like_path(name_or_path) else str(name_or_path)


def image_only(cls: type) -> type:
    """Processor class `cls` without its video processor (which needs torchvision); image inputs are unchanged.

    Qwen2-VL's, LLaVA-OneVision's and SmolVLM's processors want a video processor, which transformers
    builds only with torchvision installed. The subclass's __init__ takes the same named arguments as
    `cls` but video_processor (transformers reads them from its code to save and load a processor), so
    `from_pretrained` and `save_pretrained` keep settings such as image_seq_len.
    """
    params = inspect.signature(cls.__init__).parameters
    if "video_processor" not in params:
        return cls
    named = [p for name, p in params.items() if name not in ("self", "video_processor") and p.kind is p.POSITIONAL_OR_KEYWORD]
    defaults = {f"_d{i}": p.default for i, p in enumerate(named)}
    signature = ", ".join(p.name if p.default is p.empty else f"{p.name}=_d{i}" for i, p in enumerate(named))
    passed = ", ".join(f"{p.name}={p.name}" for p in named)
    source = f"def __init__(self, {signature}, **kwargs):\n    _base.__init__(self, {passed}, video_processor=None, **kwargs)\n"
    scope = {"_base": cls, **defaults}
    exec(source, scope)  # noqa: S102 - a fixed template over the parameter names of a transformers class
    return type(cls.__name__, (cls,), {"__init__": scope["__init__"], "__module__": cls.__module__, "__doc__": cls.__doc__})


def load_processor(source: str, **hub: Any) -> ProcessorMixin:
    """AutoProcessor.from_pretrained; without torchvision, a processor that wants a video processor is loaded without one."""
    import transformers
    from transformers import AutoConfig, AutoProcessor
    from transformers.utils import is_torchvision_available

    try:
        return AutoProcessor.from_pretrained(source, **hub)
    except (OSError, ValueError, ImportError, AttributeError) as err:
        if is_torchvision_available() or "video" not in str(err).lower():
            raise
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        model_type = AutoConfig.from_pretrained(source, **hub).model_type
        cls = getattr(transformers, PROCESSOR_MAPPING_NAMES.get(model_type) or "", None)
        if cls is None:
            raise
        return image_only(cls).from_pretrained(source, **hub)


def load_model(source: str, **kwargs: Any) -> PreTrainedModel:
    """The checkpoint's model through AutoModelForImageTextToText, else the class its config names."""
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except ValueError as err:  # a config this auto class does not map
        hub = {k: v for k, v in kwargs.items() if k in HUB_KWARGS}
        names = getattr(AutoConfig.from_pretrained(source, **hub), "architectures", None) or []
        cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
        if cls is None:
            raise ValueError(f"{source!r}: neither AutoModelForImageTextToText nor its config's architectures {names} "
                             "give a model class") from err
        return cls.from_pretrained(source, **kwargs)
