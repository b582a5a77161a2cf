"""The fixed-bin histograms: bins read off the bits equal a search of the edges, for every dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronwidgets.reduce.moments import HIST_EDGES, N_BINS, bin_counts, hist_bins


def searched_bins(values: np.ndarray) -> np.ndarray:
    """The reference: bins closed towards zero, by a search of the edges."""
    v = values.astype(np.float64)
    return np.where(v > 0, np.searchsorted(HIST_EDGES, v, side="right"), np.searchsorted(HIST_EDGES, v, side="left"))


def test_float16_counts_equal_a_search_on_every_bit_pattern():
    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.float16)  # zeros, subnormals, inf, NaN
    columns = every.reshape(-1, 8)  # 8 neurons, 8192 values each
    got = bin_counts(columns)
    for j in range(8):
        expected = np.bincount(hist_bins(columns[:, j].float()).long().numpy(), minlength=N_BINS)
        np.testing.assert_array_equal(got[j].numpy(), expected)
    finite = ~torch.isnan(columns) & ~torch.isinf(columns)
    for j in range(8):  # and, where a search is defined, the search
        expected = np.bincount(searched_bins(columns[:, j][finite[:, j]].float().numpy()), minlength=N_BINS)
        inf_nan = np.bincount(hist_bins(columns[:, j][~finite[:, j]].float()).long().numpy(), minlength=N_BINS)
        np.testing.assert_array_equal(got[j].numpy(), expected + inf_nan)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_counts_per_neuron_equal_a_search(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g) * torch.exp(torch.randn(300, 5, generator=g) * 4)
    x[::7] = 0.0
    x[1::11] = -0.0
    x[2, :] = torch.tensor([1e-30, -1e-30, 2.0**-10, -(2.0**-10), 1024.0])
    x = x.to(dtype)
    got = bin_counts(x)
    for j in range(5):
        np.testing.assert_array_equal(got[j].numpy(), np.bincount(searched_bins(x[:, j].float().numpy()), minlength=N_BINS))
