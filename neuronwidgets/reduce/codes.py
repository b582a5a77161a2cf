"""Map codes: activations quantised on a sample's own scale, packed 4-bit, and their histograms."""

from __future__ import annotations

import numpy as np
import torch


def quantize(values: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """round((2^bits - 1) * relu(v) / scale) as uint8, where `scale` is at least the values' maximum.

    Where scale <= 0 every relu(v) is 0, and so is the code; NaN gives 0.
    """
    q = (1 << bits) - 1
    codes = torch.clamp(values.float(), min=0).div_(scale.float()).mul_(q).round_()  # relu(v) / scale <= 1: no overflow
    return codes.nan_to_num_(0.0).clamp_(max=q).to(torch.uint8)  # 0 / 0 where scale is 0


def dequantize(codes: np.ndarray, scale: np.ndarray | float, bits: int) -> np.ndarray:
    q = (1 << bits) - 1
    return (np.asarray(codes, np.float32) / q) * np.asarray(scale, np.float32)


def pack4(codes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Two 4-bit codes per byte along the last axis (padded to even length): a numpy array or a torch tensor."""
    if isinstance(codes, torch.Tensor):
        if codes.shape[-1] % 2:
            codes = torch.nn.functional.pad(codes, (0, 1))
        return codes[..., 0::2] | (codes[..., 1::2] << 4)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack4(packed: np.ndarray | torch.Tensor, length: int) -> np.ndarray | torch.Tensor:
    """The codes `pack4` packed, cut to `length`: a numpy array or a torch tensor."""
    halves = (packed & 0x0F, packed >> 4)
    both = torch.stack(halves, -1) if isinstance(packed, torch.Tensor) else np.stack(halves, -1)
    return both.reshape(packed.shape[:-1] + (packed.shape[-1] * 2,))[..., :length]


def store_codes(codes: np.ndarray | torch.Tensor, bits: int) -> np.ndarray | torch.Tensor:
    """Maps of uint8 codes [..., length] as an index keeps them, in files and in a LayerState (4-bit: two to a byte)."""
    return pack4(codes) if bits == 4 else codes


def map_codes(stored: np.ndarray | torch.Tensor, width: int, bits: int) -> np.ndarray | torch.Tensor:
    """Stored maps as one uint8 code per patch or token, cut to `width`: numpy or torch."""
    return unpack4(stored, width) if bits == 4 else stored[..., :width]


def code_histogram(codes: torch.Tensor, levels: int, chunk: int = 1 << 22) -> torch.Tensor:
    """Counts of the codes 1..levels along the last axis: [..., L] uint8 -> [..., levels] int64.

    Code 0 is left out: its level is 0, which no category threshold counts, and the
    histogram is all the paper rule needs of a top sample whose map is not kept.
    """
    lead, length = codes.shape[:-1], codes.shape[-1]
    if length == 0 or codes.numel() == 0:  # no text tokens (max_text_tokens=0), or no samples past map_k
        return torch.zeros(lead + (levels,), dtype=torch.int64, device=codes.device)
    flat = codes.reshape(-1, length)
    out = torch.zeros((flat.shape[0], levels + 1), dtype=torch.int64, device=codes.device)
    step = max(1, chunk // max(length, 1))
    for start in range(0, flat.shape[0], step):
        part = flat[start : start + step].to(torch.int64)
        rows = part.shape[0]
        part = part + torch.arange(rows, device=codes.device)[:, None] * (levels + 1)
        out[start : start + rows] = torch.bincount(part.view(-1), minlength=rows * (levels + 1)).view(rows, levels + 1)
    return out[:, 1:].reshape(lead + (levels,))


def stored_code_histogram(stored: torch.Tensor, width: int, bits: int, chunk: int = 1 << 15) -> torch.Tensor:
    """`code_histogram` of maps as an index stores them ([..., bytes], 4-bit codes two to a byte): [..., levels] int64.

    Each byte adds its row of a small table (how many of each code it holds) by one
    embedding_bag sum per chunk of maps: no unpacking, no per-code index (5x faster than
    unpacking and `code_histogram` on a CPU). Codes past `width` (a packed map's padding) are 0, and left out.
    """
    levels = (1 << bits) - 1
    lead = stored.shape[:-1]
    if stored.shape[-1] == 0 or stored.numel() == 0 or width == 0:
        return torch.zeros(lead + (levels,), dtype=torch.int64, device=stored.device)
    if bits == 8:
        return code_histogram(stored[..., :width], levels)
    byte = torch.arange(256, device=stored.device)
    table = torch.zeros((256, 16), dtype=torch.float32, device=stored.device)  # table[b, c]: codes c in byte b (0, 1 or 2)
    table.index_put_((byte, byte & 15), torch.ones(256, device=stored.device), accumulate=True)
    table.index_put_((byte, byte >> 4), torch.ones(256, device=stored.device), accumulate=True)
    used = (width + 1) // 2
    flat = stored.reshape(-1, stored.shape[-1])[:, :used]
    out = torch.empty((flat.shape[0], levels), dtype=torch.int64, device=stored.device)
    for start in range(0, flat.shape[0], chunk):
        part = flat[start : start + chunk].to(torch.int32)
        sums = torch.nn.functional.embedding_bag(part, table, mode="sum")  # exact: small integers in float32
        out[start : start + chunk] = sums[:, 1:].to(torch.int64)
    if width % 2:  # the last byte's high half lies past the map
        pad = (flat[:, -1] >> 4).to(torch.int64)
        rows = (pad > 0).nonzero().view(-1)
        out[rows, pad[rows] - 1] -= 1
    return out.reshape(lead + (levels,))


def codes_from_histogram(hist: torch.Tensor, length: int) -> torch.Tensor:
    """A map with the given code histogram ([..., levels] -> [..., length] uint8), codes in descending order.

    Stands in for a map that was not kept: such a sample can only fall further in the ranking
    (resume, merge), so only its histogram is ever read again.
    """
    levels = hist.shape[-1]
    at_least = hist.flip(-1).cumsum(-1)  # [..., j]: how many codes are >= levels - j (non-decreasing)
    pos = torch.arange(length, device=hist.device).expand(hist.shape[:-1] + (length,)).contiguous()
    # the code at position p is the number of codes c with (count of codes >= c) > p
    return (levels - torch.searchsorted(at_least.contiguous(), pos, right=True)).to(torch.uint8)
