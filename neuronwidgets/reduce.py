"""Streaming, mergeable reductions of one layer's neurons: moments, histograms, top-k records.

Everything here is a torch tensor on the model's device, updated batch by batch inside the
forward hook, so only small results ever reach the host. Every reduction merges exactly
(counts and histograms add; top-k keeps a total order: value desc, then sample/position asc),
which is what makes resume and shard merging give the index of one pass.
"""

from __future__ import annotations

import numpy as np
import torch

#: Fixed histogram edges, symmetric and geometric (bins must not depend on the data, so
#: histograms merge by adding): half octaves, +-2^(k/2) for k = -20..20 (about 0.001 to 1024),
#: and 0. A value's bin is found from its float exponent (`hist_bins`), several times faster
#: than a binary search over the edges.
_HALF_OCTAVES = 20
_POS_EDGES = 2.0 ** (np.arange(-_HALF_OCTAVES, _HALF_OCTAVES + 1) / 2)
HIST_EDGES = np.concatenate([-_POS_EDGES[::-1], [0.0], _POS_EDGES])
N_BINS = len(HIST_EDGES) + 1
_N_POS = len(_POS_EDGES)
# The smallest float32 mantissa at or above sqrt(1/2): m >= it exactly when m >= sqrt(1/2).
_SQRT_HALF = np.float32(np.sqrt(0.5))
if float(_SQRT_HALF) < np.sqrt(0.5):
    _SQRT_HALF = np.nextafter(_SQRT_HALF, np.float32(1))
_SQRT_HALF = float(_SQRT_HALF)


def hist_bins(x: torch.Tensor) -> torch.Tensor:
    """The histogram bin (int32) of every value of a float32 tensor, bins closed towards zero.

    Equal to np.searchsorted(HIST_EDGES, x, side="right") for x > 0 and side="left" for
    x <= 0, computed from frexp's exact exponent and mantissa instead of a search (in int32,
    in place: each pass over the batch costs).
    """
    a = x.abs().clamp_(max=float(_POS_EDGES[-1]) * 2)  # inf -> beyond the last edge
    mantissa, exponent = torch.frexp(a)  # a = mantissa * 2**exponent, mantissa in [0.5, 1)
    # c: the number of positive edges <= a (the largest k with 2^(k/2) <= a is 2e - 2 + [m >= sqrt 1/2]).
    c = (exponent * 2 + (mantissa >= _SQRT_HALF).to(torch.int32)).add_(_HALF_OCTAVES - 1).clamp_(0, _N_POS)
    c.masked_fill_(a == 0, 0)
    positive = (x > 0).to(torch.int32)
    return c.mul_(positive * 2 - 1).add_(positive).add_(_N_POS)  # x > 0: N_POS + 1 + c; else N_POS - c
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


def code_histogram(codes: torch.Tensor, levels: int, chunk: int = 1 << 22) -> torch.Tensor:
    """Counts of the codes 1..levels along the last axis: [..., L] uint8 -> [..., levels] int64.

    Code 0 is left out: its level is 0, which no category threshold counts, and the
    histogram is all the paper rule needs of a top sample whose map is not kept.
    """
    lead, length = codes.shape[:-1], codes.shape[-1]
    flat = codes.reshape(-1, length)
    out = torch.zeros((flat.shape[0], levels + 1), dtype=torch.int64, device=codes.device)
    step = max(1, chunk // max(length, 1))
    for start in range(0, flat.shape[0], step):
        part = flat[start : start + step].to(torch.int64)
        rows = part.shape[0]
        part = part + torch.arange(rows, device=codes.device)[:, None] * (levels + 1)
        out[start : start + rows] = torch.bincount(part.view(-1), minlength=rows * (levels + 1)).view(rows, levels + 1)
    return out[:, 1:].reshape(lead + (levels,))


def codes_from_histogram(hist: torch.Tensor, length: int) -> torch.Tensor:
    """A map with the given code histogram ([..., levels] -> [..., length] uint8), codes in descending order.

    Stands in for a map that was not kept: such a sample can only fall further in the ranking
    (resume, merge), so only its histogram is ever read again.
    """
    levels = hist.shape[-1]
    at_least = hist.flip(-1).cumsum(-1).flip(-1)  # [..., c - 1]: how many codes are >= c
    pos = torch.arange(length, device=hist.device)
    codes = torch.zeros(hist.shape[:-1] + (length,), dtype=torch.uint8, device=hist.device)
    for c in range(levels):
        codes += (pos < at_least[..., c : c + 1]).to(torch.uint8)
    return codes


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
        self._bin_offsets = torch.arange(n, device=dev, dtype=torch.int32)[None, :] * N_BINS

    # --- one batch -----------------------------------------------------------
    def update(self, acts: torch.Tensor, image_pos: torch.Tensor, text_pos: torch.Tensor, text_valid: torch.Tensor,
               samples: torch.Tensor, random_slots: list[tuple[int, int]], image_offset: int | None = None) -> None:
        """Fold a batch in. acts [B, T, N]; image_pos [B, P]; text_pos/text_valid [B, Tm]; samples [B].

        image_offset: where every sample's patches start, when they all start at the same place
        (then they are read as a slice, not gathered).

        Top-k records live in unordered slots during collection: a batch writes only the
        (neuron, slot) pairs it takes over, so the cost after warm-up is a few gathers, not a
        rewrite of every neuron's maps. Saving sorts them into the canonical order.
        """
        t = self.t
        B = acts.shape[0]
        width = int(text_valid.sum(1).max().item()) if text_valid.numel() else 0  # this batch's longest text
        text_pos, text_valid = text_pos[:, :width], text_valid[:, :width]
        b_idx = torch.arange(B, device=acts.device)[:, None]
        if image_offset is not None:
            img = acts[:, image_offset : image_offset + self.P].float().contiguous()  # [B, P, N]
        else:
            img = acts[b_idx, image_pos].float()
        txt = acts[b_idx, text_pos].float()  # [B, width, N]
        valid = text_valid[:, :, None]
        txt_ninf = txt.masked_fill(~valid, -torch.inf)
        img_flat, txt_flat = img.reshape(-1, self.n), txt[text_valid]
        for m, flat in (("image", img_flat), ("text", txt_flat)):
            t[f"{m}_count"] += flat.shape[0]
            if flat.shape[0] == 0:
                continue
            t[f"{m}_max"] = torch.maximum(t[f"{m}_max"], flat.amax(0))
            # Per-batch partial sums in float32 (cheap on any device), accumulated in float64.
            t[f"{m}_sum"] += flat.sum(0).double()
            t[f"{m}_sumsq"] += (flat * flat).sum(0).double()
            offs = hist_bins(flat).add_(self._bin_offsets)
            t[f"{m}_hist"] += torch.bincount(offs.view(-1), minlength=self.n * N_BINS).view(self.n, N_BINS)
        # token exemplars per modality: key = sample * (slots + 1) + position
        for m, vals, w, slots_ in (("image", img, self.P, self.P), ("text", txt_ninf, width, self.Tm)):
            if w == 0:
                continue
            flat_v = vals.reshape(B * w, self.n).T  # [N, B * w]; column r = (sample r // w, position r % w)
            if flat_v.shape[1] > self.token_k:
                # Pre-select the batch's best tokens (linear time) before the exact total-order sort;
                # it depends only on the batch, so resume and shards agree. (topk along the last
                # axis of the transposed copy measured faster on an H100 than along axis 0.)
                pick = torch.topk(flat_v, self.token_k, dim=1, sorted=False).indices
                flat_v = torch.gather(flat_v, 1, pick)
            else:
                pick = torch.arange(flat_v.shape[1], device=flat_v.device)[None].expand(self.n, -1)
            smp, pos = samples[pick // w], pick % w
            cand_v = torch.cat([t[f"tok_{m}_value"], flat_v], 1)
            cand_s = torch.cat([t[f"tok_{m}_sample"], smp], 1)
            cand_p = torch.cat([t[f"tok_{m}_pos"], pos], 1)
            key = torch.where(cand_s < 0, torch.full_like(cand_s, -1), cand_s * (slots_ + 1) + cand_p)
            idx = top_order(cand_v, key, self.token_k)
            t[f"tok_{m}_value"] = torch.gather(cand_v, 1, idx)
            t[f"tok_{m}_sample"] = torch.gather(cand_s, 1, idx)
            t[f"tok_{m}_pos"] = torch.gather(cand_p, 1, idx)
        # top samples by the neuron's largest activation on the sample (patches and text tokens)
        smax = img.amax(1)
        if width:
            smax = torch.maximum(smax, txt_ninf.amax(1))  # [B, N]
        self._update_top(smax, samples, img, txt, text_valid, width)
        for slot, b in random_slots:
            scale = smax[b].clamp(min=0)[:, None]
            t["random_value"][slot] = smax[b]
            t["random_image_codes"][slot] = quantize(img[b].T, scale, self.bits)
            t["random_text_codes"][slot] = 0
            if width:
                t["random_text_codes"][slot, :, :width] = quantize(txt[b].T, scale, self.bits) * text_valid[b][None].to(torch.uint8)

    def _update_top(self, smax, samples, img, txt, text_valid, width) -> None:
        t, k = self.t, self.top_k
        cand_v = torch.cat([t["top_value"], smax.T], 1)  # [N, k + B]
        cand_s = torch.cat([t["top_sample"], samples[None].expand(self.n, -1)], 1)
        idx = top_order(cand_v, cand_s, k)
        chosen = torch.zeros_like(cand_v, dtype=torch.bool).scatter_(1, idx, True)
        keep_old, enter = chosen[:, :k], chosen[:, k:]
        pairs = min(k, enter.shape[1])
        free_slots = torch.argsort(keep_old.to(torch.int8), dim=1, stable=True)[:, :pairs]  # evicted slots first
        entering = torch.argsort((~enter).to(torch.int8), dim=1, stable=True)[:, :pairs]  # entering items first
        used = torch.arange(pairs, device=smax.device)[None, :] < enter.sum(1, keepdim=True)
        n_sel, j_sel = used.nonzero(as_tuple=True)
        if n_sel.numel() == 0:
            return
        slot, b = free_slots[n_sel, j_sel], entering[n_sel, j_sel]
        value = smax[b, n_sel]
        t["top_value"][n_sel, slot] = value
        t["top_sample"][n_sel, slot] = samples[b]
        scale = value.clamp(min=0)[:, None]
        t["top_image_codes"][n_sel, slot] = quantize(img[b, :, n_sel], scale, self.bits)
        t["top_text_codes"][n_sel, slot] = 0
        if width:
            codes = quantize(txt[b, :, n_sel], scale, self.bits) * text_valid[b].to(torch.uint8)
            t["top_text_codes"][n_sel[:, None], slot[:, None], torch.arange(width, device=smax.device)[None, :]] = codes

    def canonical_top(self) -> dict[str, torch.Tensor]:
        """The top-k arrays sorted per neuron: value descending, then sample ascending."""
        t = self.t
        idx = top_order(t["top_value"], t["top_sample"], self.top_k)
        out = {"top_value": torch.gather(t["top_value"], 1, idx), "top_sample": torch.gather(t["top_sample"], 1, idx)}
        for name in ("top_image_codes", "top_text_codes"):
            out[name] = torch.gather(t[name], 1, idx[:, :, None].expand(-1, -1, t[name].shape[2]))
        return out

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
        """All arrays on the host, the top-k in canonical order."""
        return {k: v.detach().cpu().numpy() for k, v in {**self.t, **self.canonical_top()}.items()}

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], *, top_k, token_k, random_k, bits, device="cpu") -> "LayerState":
        n = arrays["top_value"].shape[0]
        state = cls(n, arrays["top_image_codes"].shape[2], arrays["top_text_codes"].shape[2], top_k, token_k, random_k, bits, device)
        for k, v in arrays.items():
            state.t[k] = torch.from_numpy(np.array(v, copy=True)).to(device)  # writable, 0-d kept
        return state
