"""Streaming, mergeable reductions of one layer's neurons: moments, histograms, top-k records.

Everything here is a torch tensor on the model's device, updated batch by batch inside the
forward hook, so only small results ever reach the host. Every reduction merges exactly
(counts and histograms add; top-k keeps a total order: value desc, then sample/position asc),
which is what makes resume and shard merging give the index of one pass.
"""

from __future__ import annotations

import numpy as np
import torch

#: Fixed histogram edges, symmetric and geometric: bins must not depend on the data to merge.
HIST_EDGES = np.concatenate([-np.geomspace(1e3, 1e-3, 31), [0.0], np.geomspace(1e-3, 1e3, 31)])
N_BINS = len(HIST_EDGES) + 1
MODALITIES = ("image", "text")


def top_order(values: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the indices of the `k` best entries: value descending, then key ascending.

    Two stable sorts give a total order, so ties (identical background patches are common)
    break the same way whatever order the data came in.
    """
    by_key = torch.argsort(keys, dim=1, stable=True)
    vals = torch.gather(values, 1, by_key)
    by_val = torch.argsort(-vals, dim=1, stable=True)
    return torch.gather(by_key, 1, by_val)[:, :k]


def quantize(values: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """round((2^bits - 1) * relu(v) / scale) as uint8; zero where scale <= 0."""
    q = (1 << bits) - 1
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(q * torch.clamp(values, min=0) / safe)
    codes = torch.where(scale > 0, codes, torch.zeros_like(codes))
    return codes.clamp_(0, q).to(torch.uint8)


def dequantize(codes: np.ndarray, scale, bits: int) -> np.ndarray:
    q = (1 << bits) - 1
    return (np.asarray(codes, np.float32) / q) * np.asarray(scale, np.float32)


def pack4(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte along the last axis (padded to even length)."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack4(packed: np.ndarray, length: int) -> np.ndarray:
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :length]


class LayerState:
    """The reductions of one layer's `n` neurons over the samples seen so far."""

    def __init__(self, n: int, n_patches: int, max_text: int, top_k: int, token_k: int, random_k: int, bits: int, device="cpu"):
        self.n, self.P, self.Tm = n, n_patches, max_text
        self.top_k, self.token_k, self.random_k, self.bits = top_k, token_k, random_k, bits
        dev = torch.device(device)
        f64, i64 = torch.float64, torch.int64
        self.t: dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            self.t[f"{m}_count"] = torch.zeros((), dtype=i64, device=dev)
            self.t[f"{m}_sum"] = torch.zeros(n, dtype=f64, device=dev)
            self.t[f"{m}_sumsq"] = torch.zeros(n, dtype=f64, device=dev)
            self.t[f"{m}_max"] = torch.full((n,), -torch.inf, dtype=torch.float32, device=dev)
            self.t[f"{m}_hist"] = torch.zeros((n, N_BINS), dtype=i64, device=dev)
            self.t[f"tok_{m}_value"] = torch.full((n, token_k), -torch.inf, dtype=torch.float32, device=dev)
            self.t[f"tok_{m}_sample"] = torch.full((n, token_k), -1, dtype=i64, device=dev)
            self.t[f"tok_{m}_pos"] = torch.full((n, token_k), -1, dtype=i64, device=dev)
        self.t["top_value"] = torch.full((n, top_k), -torch.inf, dtype=torch.float32, device=dev)
        self.t["top_sample"] = torch.full((n, top_k), -1, dtype=i64, device=dev)
        self.t["top_image_codes"] = torch.zeros((n, top_k, self.P), dtype=torch.uint8, device=dev)
        self.t["top_text_codes"] = torch.zeros((n, top_k, self.Tm), dtype=torch.uint8, device=dev)
        self.t["random_value"] = torch.zeros((random_k, n), dtype=torch.float32, device=dev)
        self.t["random_image_codes"] = torch.zeros((random_k, n, self.P), dtype=torch.uint8, device=dev)
        self.t["random_text_codes"] = torch.zeros((random_k, n, self.Tm), dtype=torch.uint8, device=dev)
        self._edges = torch.tensor(HIST_EDGES, dtype=torch.float32, device=dev)

    # --- one batch -----------------------------------------------------------
    def update(self, acts: torch.Tensor, image_pos: torch.Tensor, text_pos: torch.Tensor, text_valid: torch.Tensor,
               samples: torch.Tensor, random_slots: list[tuple[int, int]]) -> None:
        """Fold a batch in. acts [B, T, N]; image_pos [B, P]; text_pos/text_valid [B, Tm]; samples [B]."""
        t = self.t
        a = acts.float()
        b_idx = torch.arange(a.shape[0], device=a.device)[:, None]
        img = a[b_idx, image_pos]  # [B, P, N]
        txt = a[b_idx, text_pos]  # [B, Tm, N]
        valid = text_valid[:, :, None]
        for m, vals, mask in (("image", img, None), ("text", txt, valid)):
            if mask is None:
                flat = vals.reshape(-1, self.n)
                t[f"{m}_count"] += flat.shape[0]
                t[f"{m}_max"] = torch.maximum(t[f"{m}_max"], flat.amax(0))
            else:
                flat = vals[text_valid]  # [n_valid, N]
                t[f"{m}_count"] += flat.shape[0]
                if flat.shape[0]:
                    t[f"{m}_max"] = torch.maximum(t[f"{m}_max"], flat.amax(0))
            if flat.shape[0] == 0:
                continue
            t[f"{m}_sum"] += flat.sum(0, dtype=torch.float64)
            t[f"{m}_sumsq"] += (flat.double() ** 2).sum(0)
            bins = torch.bucketize(flat, self._edges)  # [rows, N]
            offs = bins + torch.arange(self.n, device=a.device)[None, :] * N_BINS
            t[f"{m}_hist"] += torch.bincount(offs.reshape(-1), minlength=self.n * N_BINS).reshape(self.n, N_BINS)
        # token exemplars per modality: key = sample * width + position
        B = a.shape[0]
        for m, vals, width in (("image", img, self.P), ("text", txt.masked_fill(~valid, -torch.inf), self.Tm)):
            cand_v = torch.cat([t[f"tok_{m}_value"], vals.reshape(B * width, self.n).T], 1)
            pos = torch.arange(width, device=a.device).repeat(B)
            smp = samples.repeat_interleave(width)
            cand_s = torch.cat([t[f"tok_{m}_sample"], smp[None].expand(self.n, -1)], 1)
            cand_p = torch.cat([t[f"tok_{m}_pos"], pos[None].expand(self.n, -1)], 1)
            key = torch.where(cand_s < 0, torch.full_like(cand_s, -1), cand_s * (width + 1) + cand_p)
            idx = top_order(cand_v, key, self.token_k)
            t[f"tok_{m}_value"] = torch.gather(cand_v, 1, idx)
            t[f"tok_{m}_sample"] = torch.gather(cand_s, 1, idx)
            t[f"tok_{m}_pos"] = torch.gather(cand_p, 1, idx)
        # top samples by the neuron's largest activation on the sample (patches and text tokens)
        smax = torch.maximum(img.amax(1), txt.masked_fill(~valid, -torch.inf).amax(1))  # [B, N]
        scale = smax.clamp(min=0)[:, None, :]
        img_codes = quantize(img, scale, self.bits)  # [B, P, N]
        txt_codes = quantize(txt, scale, self.bits) * valid.to(torch.uint8)  # [B, Tm, N]
        cand_v = torch.cat([t["top_value"], smax.T], 1)
        cand_s = torch.cat([t["top_sample"], samples[None].expand(self.n, -1)], 1)
        idx = top_order(cand_v, cand_s, self.top_k)
        t["top_value"] = torch.gather(cand_v, 1, idx)
        t["top_sample"] = torch.gather(cand_s, 1, idx)
        for name, codes, width in (("top_image_codes", img_codes, self.P), ("top_text_codes", txt_codes, self.Tm)):
            cand = torch.cat([t[name], codes.permute(2, 0, 1)], 1)  # [N, k + B, width]
            t[name] = torch.gather(cand, 1, idx[:, :, None].expand(-1, -1, width))
        for slot, b in random_slots:
            t["random_value"][slot] = smax[b]
            t["random_image_codes"][slot] = img_codes[b].T
            t["random_text_codes"][slot] = txt_codes[b].T

    # --- merging ---------------------------------------------------------------
    def merge(self, other: "LayerState", random_take: list[tuple[str, int]]) -> None:
        """Fold `other` (same shapes) into self; random_take lists (source, slot) for the new random set."""
        t, o = self.t, other.t
        for m in MODALITIES:
            t[f"{m}_count"] = t[f"{m}_count"] + o[f"{m}_count"]
            t[f"{m}_sum"] = t[f"{m}_sum"] + o[f"{m}_sum"]
            t[f"{m}_sumsq"] = t[f"{m}_sumsq"] + o[f"{m}_sumsq"]
            t[f"{m}_max"] = torch.maximum(t[f"{m}_max"], o[f"{m}_max"])
            t[f"{m}_hist"] = t[f"{m}_hist"] + o[f"{m}_hist"]
            width = self.P if m == "image" else self.Tm
            cand_v = torch.cat([t[f"tok_{m}_value"], o[f"tok_{m}_value"]], 1)
            cand_s = torch.cat([t[f"tok_{m}_sample"], o[f"tok_{m}_sample"]], 1)
            cand_p = torch.cat([t[f"tok_{m}_pos"], o[f"tok_{m}_pos"]], 1)
            key = torch.where(cand_s < 0, torch.full_like(cand_s, -1), cand_s * (width + 1) + cand_p)
            idx = top_order(cand_v, key, self.token_k)
            t[f"tok_{m}_value"], t[f"tok_{m}_sample"], t[f"tok_{m}_pos"] = (
                torch.gather(c, 1, idx) for c in (cand_v, cand_s, cand_p)
            )
        cand_v = torch.cat([t["top_value"], o["top_value"]], 1)
        cand_s = torch.cat([t["top_sample"], o["top_sample"]], 1)
        idx = top_order(cand_v, cand_s, self.top_k)
        t["top_value"], t["top_sample"] = torch.gather(cand_v, 1, idx), torch.gather(cand_s, 1, idx)
        for name in ("top_image_codes", "top_text_codes"):
            cand = torch.cat([t[name], o[name]], 1)
            t[name] = torch.gather(cand, 1, idx[:, :, None].expand(-1, -1, cand.shape[2]))
        for name in ("random_value", "random_image_codes", "random_text_codes"):
            src = {"self": t[name], "other": o[name]}
            new = torch.zeros_like(t[name])
            for slot, (which, i) in enumerate(random_take):
                new[slot] = src[which][i]
            t[name] = new

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.t.items()}

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], *, top_k, token_k, random_k, bits, device="cpu") -> "LayerState":
        n = arrays["top_value"].shape[0]
        state = cls(n, arrays["top_image_codes"].shape[2], arrays["top_text_codes"].shape[2], top_k, token_k, random_k, bits, device)
        for k, v in arrays.items():
            state.t[k] = torch.from_numpy(np.array(v, copy=True)).to(device)  # writable, 0-d kept
        return state
