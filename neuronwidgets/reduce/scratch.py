"""Buffers for batch-sized temporaries: reused on a CPU, fresh on a GPU."""

from __future__ import annotations

import math
import threading

import torch


class Scratch:
    """Buffers for batch-sized temporaries, by name: reused per thread, or fresh each call.

    On a CPU a fresh batch-sized tensor costs more than the arithmetic done on it (new pages
    from the system every time), so SCRATCH reuses them; a GPU's caching allocator already
    reuses memory, so there FRESH allocates as plain code would.
    """

    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self._local = threading.local()

    def __call__(self, name: str, shape, dtype: torch.dtype, device) -> torch.Tensor:
        if not self.reuse:
            return torch.empty(shape, dtype=dtype, device=device)
        bufs = self._local.__dict__.setdefault("bufs", {})
        n = math.prod(shape)
        buf = bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != torch.device(device):
            with torch.inference_mode(False):  # a normal tensor: usable inside and outside inference mode
                buf = bufs[name] = torch.empty(max(n, 1), dtype=dtype, device=device)
        return buf[:n].view(shape)


SCRATCH, FRESH = Scratch(), Scratch(reuse=False)
