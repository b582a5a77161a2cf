"""A LayerState to the arrays of a layer file and back (compact dtypes, maps of the best map_k samples)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from neuronwidgets.constants import MODALITIES
from neuronwidgets.reduce.codes import (
    codes_from_histogram,
    store_codes,
    stored_code_histogram,
)
from neuronwidgets.reduce.state import LayerState


def smallest_uint(limit: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype that holds 0..limit."""
    return next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if limit <= np.iinfo(t).max)


def state_to_arrays(state: LayerState, random_slots: list[int],
                    map_k: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(arrays for the layer file, per-neuron stats columns), compact dtypes, random in canonical order.

    Maps are written for the best `map_k` top samples (default: all); every top sample keeps the
    histogram of its map codes, which is all the paper rule reads (~45 bytes; a map is ~320): the
    categories never read a map.
    """
    map_k = state.top_k if map_k is None else min(int(map_k), state.top_k)
    top = state.canonical_top()
    for mod, width in (("image", state.P), ("text", state.Tm)):
        top[f"top_{mod}_hist"] = stored_code_histogram(top[f"top_{mod}_codes"], width, state.bits)
        top[f"top_{mod}_codes"] = top[f"top_{mod}_codes"][:, :map_k]
    a = {k: v.detach().cpu().numpy() for k, v in {**state.t, **top}.items()}
    out: dict[str, np.ndarray] = {}
    stats: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        hist = a[f"{m}_hist"]  # int32 on disk unless a bin outgrows it (billions of tokens)
        out[f"hist_{m}"] = hist.astype(np.int32) if hist.max(initial=0) <= np.iinfo(np.int32).max else hist
        out[f"tok_{m}_value"] = a[f"tok_{m}_value"]
        out[f"tok_{m}_sample"] = a[f"tok_{m}_sample"].astype(np.int32)
        out[f"tok_{m}_pos"] = a[f"tok_{m}_pos"].astype(np.int16)
        stats[f"{m}_count"] = np.full(state.n, int(a[f"{m}_count"]), np.int64)
        stats[f"{m}_sum"] = a[f"{m}_sum"]
        stats[f"{m}_sumsq"] = a[f"{m}_sumsq"]
        stats[f"{m}_max"] = a[f"{m}_max"]
    out["top_value"] = a["top_value"]
    out["top_sample"] = a["top_sample"].astype(np.int32)
    out["top_image_hist"] = a["top_image_hist"].astype(smallest_uint(state.P))
    out["top_text_hist"] = a["top_text_hist"].astype(smallest_uint(state.Tm))
    slots = np.asarray(random_slots, np.int64)
    out["random_value"] = a["random_value"][slots]
    for k in ("top_image_codes", "top_text_codes"):
        out[k] = a[k]  # the state keeps maps as the files do (4-bit codes packed two to a byte)
    out["random_image_codes"] = a["random_image_codes"][slots]
    out["random_text_codes"] = a["random_text_codes"][slots]
    # safetensors writes an array's memory as it lies: a strided view (a slice) would be scrambled
    return {k: np.ascontiguousarray(v) for k, v in out.items()}, stats


def top_code_histograms(arrays: dict[str, np.ndarray], manifest: dict, modality: str) -> np.ndarray:
    """[neurons, top_k, levels]: every top sample's histogram of its map codes 1..levels (int32)."""
    hist = arrays[f"top_{modality}_hist"]
    if hist.shape[1] == manifest["top_k"]:  # one per top sample, as written since format 5
        return hist.astype(np.int32)
    width = manifest["n_patches"] if modality == "image" else manifest["max_text_tokens"]
    codes = torch.from_numpy(np.ascontiguousarray(arrays[f"top_{modality}_codes"]))
    kept = stored_code_histogram(codes, width, manifest["map_bits"]).to(torch.int32).numpy()
    return np.concatenate([kept, hist.astype(np.int32)], axis=1)  # (format 4: histograms past map_k only)


def past_map_histograms(arrays: dict[str, np.ndarray], manifest: dict, modality: str) -> np.ndarray:
    """[neurons, top_k - map_k, levels]: the code histograms of the top samples whose maps were not kept."""
    hist = arrays[f"top_{modality}_hist"]
    kept = arrays[f"top_{modality}_codes"].shape[1]
    return hist[:, kept:] if hist.shape[1] == manifest["top_k"] else hist


def arrays_to_state(arrays: dict[str, np.ndarray], stats: pd.DataFrame, m: dict, device: str | torch.device = "cpu") -> LayerState:
    """Rebuild a LayerState (for resuming and merging) from a saved layer."""
    P, Tm, bits = m["n_patches"], m["max_text_tokens"], m["map_bits"]
    R = m["random_k"]
    n_random = arrays["random_value"].shape[0]

    t = {}
    for mod in MODALITIES:
        t[f"{mod}_count"] = np.asarray(int(stats[f"{mod}_count"].iloc[0]) if len(stats) else 0, np.int64)
        t[f"{mod}_sum"] = stats[f"{mod}_sum"].to_numpy(np.float64)
        t[f"{mod}_sumsq"] = stats[f"{mod}_sumsq"].to_numpy(np.float64)
        t[f"{mod}_max"] = stats[f"{mod}_max"].to_numpy(np.float32)
        t[f"{mod}_hist"] = arrays[f"hist_{mod}"].astype(np.int64)
        t[f"tok_{mod}_value"] = arrays[f"tok_{mod}_value"]
        t[f"tok_{mod}_sample"] = arrays[f"tok_{mod}_sample"].astype(np.int64)
        t[f"tok_{mod}_pos"] = arrays[f"tok_{mod}_pos"].astype(np.int64)
    t["top_value"] = arrays["top_value"]
    t["top_sample"] = arrays["top_sample"].astype(np.int64)
    # Samples past map_k kept only their code histograms; a stand-in map with the same histogram
    # is enough, since such a sample can only fall further (it is never shown, only counted).
    for mod, width in (("image", P), ("text", Tm)):
        stand_in = codes_from_histogram(torch.from_numpy(past_map_histograms(arrays, m, mod).astype(np.int64)), width).numpy()
        # the state keeps maps as files do
        t[f"top_{mod}_codes"] = np.concatenate([arrays[f"top_{mod}_codes"], store_codes(stand_in, bits)], axis=1)
    n = t["top_value"].shape[0]
    rv = np.zeros((R, n), np.float32)
    ri = np.zeros((R, n) + arrays["random_image_codes"].shape[2:], np.uint8)
    rt = np.zeros((R, n) + arrays["random_text_codes"].shape[2:], np.uint8)
    rv[:n_random], ri[:n_random], rt[:n_random] = arrays["random_value"], arrays["random_image_codes"], arrays["random_text_codes"]
    t["random_value"], t["random_image_codes"], t["random_text_codes"] = rv, ri, rt
    return LayerState.from_numpy(t, n_patches=P, max_text=Tm, top_k=m["top_k"], token_k=m["token_k"], random_k=R, bits=bits, device=device)
