"""Fixed-bin histograms of activations, per neuron, read off the floats' bits (no search).

The bins never depend on the data, so histograms of shards and batches merge by adding.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from neuronwidgets.reduce.scratch import FRESH, Scratch

#: Fixed histogram edges, symmetric and geometric (bins must not depend on the data, so
#: histograms merge by adding): +-2^e and +-1.5 * 2^e from 2^-10 to 2^10 (about 0.001 to 1024),
#: and 0. They are where a float32's exponent or its first mantissa bit changes, so a value's
#: bin is read off its bits (`hist_bins`): a few in-place integer passes, no search.
_LOW_EXP, _HIGH_EXP = -10, 10
_POS_EDGES = np.array([2.0**e * f for e in range(_LOW_EXP, _HIGH_EXP) for f in (1.0, 1.5)] + [2.0**_HIGH_EXP])
HIST_EDGES = np.concatenate([-_POS_EDGES[::-1], [0.0], _POS_EDGES])
N_BINS = len(HIST_EDGES) + 1
_N_POS = len(_POS_EDGES)
ZERO_BIN = _N_POS  # the bin of 0.0: (-2^-10, 0]
# (|x| bits) >> 22 is 2 * biased exponent + first mantissa bit; for 2^-10 it is 2 * (127 - 10).
_BITS_BELOW_FIRST_EDGE = 2 * (127 + _LOW_EXP) - 1


def hist_bins(x: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
    """The histogram bin (int32) of every value of a float32 tensor, bins closed towards zero.

    Equal to np.searchsorted(HIST_EDGES, x, side="right") for x > 0 and side="left" for
    x <= 0, from a few integer passes in place. A NaN counts in an end bin, by its sign bit (a
    CPU's 0/0 is a negative NaN): the first with it set, the last without. With a reusing
    `scratch` (SCRATCH), the result lives in a reused buffer (valid until the next call).
    """
    return _shifted_bins(x, scratch, _N_POS)


def _shifted_bins(x: torch.Tensor, scratch: Scratch | None, shift) -> torch.Tensor:
    """hist_bins(x) - N_POS + shift (an int, or a tensor that broadcasts), in the same passes."""
    bits = x.float().contiguous().view(torch.int32)
    scratch = scratch or FRESH
    new = lambda name: scratch(name, bits.shape, torch.int32, bits.device)  # noqa: E731
    mag = torch.bitwise_and(bits, 0x7FFFFFFF, out=new("hist_mag"))  # |x|; its int order is the float order
    c = torch.bitwise_right_shift(mag, 22, out=new("hist_bin"))  # 2 * biased exponent + first mantissa bit
    c.sub_(_BITS_BELOW_FIRST_EDGE).clamp_(0, _N_POS)  # positive edges <= |x| (inf, nan: all)
    a = mag.clamp_(max=1).add_(c)  # [x != 0] + c: the offset above N_POS when x >= 0
    sign = torch.bitwise_right_shift(bits, 31, out=new("hist_sign"))  # -1 where x < 0 (and -0.0, whose c is 0)
    return c.add_(a).mul_(sign).add_(a).add_(shift)  # x >= 0: shift + a; x < 0: shift - c

# A float16's top 7 bits (sign, exponent, first mantissa bit) fix its bin, except that +0.0
# shares its code with the tiny positives (0, 2^-10): 128 codes per neuron, then one fold.
_HALF_SHIFT, _HALF_CODES = 9, 128


def bin_counts(flat: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
    """Per neuron, how many of its values fall in each bin: flat [tokens, n] -> [n, N_BINS] int64.

    float16 (a GPU's usual dtype) is counted from its own bits in three passes; other dtypes
    through float32 and `hist_bins`. Both equal a search of HIST_EDGES, value by value (a NaN:
    an end bin by its sign bit, as `hist_bins`).
    """
    n = flat.shape[1]
    if flat.dtype == torch.float16:
        return _half_bin_counts(flat)
    bins = _shifted_bins(flat, scratch, _offsets(n, N_BINS, _N_POS, flat.device))  # each neuron's bins a range of its own
    return torch.bincount(bins.view(-1), minlength=n * N_BINS).view(n, N_BINS)


def _half_bin_counts(flat: torch.Tensor) -> torch.Tensor:
    n = flat.shape[1]
    bits = flat.contiguous().view(torch.int16)
    codes = torch.add(torch.bitwise_right_shift(bits, _HALF_SHIFT), _offsets(n, _HALF_CODES, _HALF_CODES // 2, flat.device))
    per_code = torch.bincount(codes.view(-1), minlength=n * _HALF_CODES).view(n, _HALF_CODES)
    hist = torch.zeros((n, N_BINS), dtype=torch.int64, device=flat.device).index_add_(1, _half_code_bins(flat.device), per_code)
    plus_zero = (bits == 0).sum(0)  # counted with the tiny positives: move them to the bin of 0
    hist[:, ZERO_BIN] += plus_zero
    hist[:, ZERO_BIN + 1] -= plus_zero
    return hist


@functools.lru_cache(maxsize=32)
def _offsets(n: int, width: int, shift: int, device: torch.device) -> torch.Tensor:
    """[1, n] int32: neuron * width + shift, which puts each neuron's codes in a range of its own."""
    return (torch.arange(n, device=device, dtype=torch.int32) * width + shift)[None, :]


@functools.lru_cache(maxsize=8)
def _half_code_bins(device: torch.device) -> torch.Tensor:
    """The bin of each float16 code (code + 64 -> bin), read off a nonzero value with that code.

    Built from numbers, not from float16 bits: a CPU may drop a NaN's sign when it widens a
    float16, and the codes of +-inf are shared with NaNs (which count as +-inf, by sign).
    """
    code = (np.arange(_HALF_CODES) - _HALF_CODES // 2) & (_HALF_CODES - 1)  # the 7 top bits: sign, exponent, first mantissa bit
    sign, exponent, m1 = code >> 6, (code >> 1) & 31, code & 1
    magnitude = np.where(exponent == 31, np.inf, 2.0 ** (np.maximum(exponent, 1) - 15) * ((exponent > 0) + m1 / 2 + 2.0**-10))
    values = torch.from_numpy(np.where(sign == 1, -magnitude, magnitude).astype(np.float32))
    return hist_bins(values).long().to(device)
