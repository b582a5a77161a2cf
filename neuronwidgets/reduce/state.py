"""LayerState: the mergeable reductions of one layer's neurons (moments, histograms, top-k, maps)."""

from __future__ import annotations

import numpy as np
import torch

from neuronwidgets.constants import MODALITIES
from neuronwidgets.reduce.codes import map_codes, quantize, store_codes
from neuronwidgets.reduce.fold import DenseFold, SparseFold
from neuronwidgets.reduce.gather import gather_tokens, trim_text
from neuronwidgets.reduce.moments import N_BINS, ZERO_BIN, bin_counts
from neuronwidgets.reduce.scratch import FRESH, SCRATCH
from neuronwidgets.reduce.topk import (
    PENDING_SHARE,
    PENDING_TOP_BYTES,
    CandidateBuffer,
    top_order,
)

#: On a CPU, the most bytes of float32 rows the moments and the histogram read at a time (each temporary is this large).
STATS_CHUNK_BYTES = 32 << 20


def neuron_axis(name: str) -> int | None:
    """The axis of a state array that runs over neurons (None for the per-batch counts)."""
    if name.endswith("_count"):
        return None
    return 1 if name.startswith("random_") else 0


#: The arrays of the top-k samples, slot by slot.
TOP_NAMES = ("top_value", "top_sample", "top_image_codes", "top_text_codes")


def _best_top(arrays: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The `k` best top-sample slots of `arrays` (TOP_NAMES), sorted: value descending, then sample ascending."""
    idx = top_order(arrays["top_value"], arrays["top_sample"], k)
    out = {name: torch.gather(arrays[name], 1, idx) for name in ("top_value", "top_sample")}
    for name in ("top_image_codes", "top_text_codes"):
        out[name] = torch.gather(arrays[name], 1, idx[:, :, None].expand(-1, -1, arrays[name].shape[2]))
    return out


class LayerState(SparseFold, DenseFold):
    """The reductions of one layer's `n` neurons over the samples seen so far.

    On a CPU the top-k lists take candidates lazily: a batch only picks out what can still
    enter (at or above a lower bound of each neuron's k-th best) and buffers it; the buffer is
    merged in when it grows, or when `t` is read. Reading `t` always gives the exact state.
    """

    def __init__(self, n: int, n_patches: int, max_text: int, top_k: int, token_k: int, random_k: int, bits: int,
                 device: str | torch.device = "cpu") -> None:
        if top_k < 1 or token_k < 1:
            raise ValueError(f"top_k and token_k must be at least 1, got {top_k} and {token_k}")
        self._configure(n, n_patches, max_text, top_k, token_k, random_k, bits, device)
        dev = torch.device(device)
        f64, i64 = torch.float64, torch.int64
        t: dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            t[f"{m}_count"] = torch.zeros((), dtype=i64, device=dev)
            t[f"{m}_sum"] = torch.zeros(n, dtype=f64, device=dev)
            t[f"{m}_sumsq"] = torch.zeros(n, dtype=f64, device=dev)
            t[f"{m}_max"] = torch.full((n,), -torch.inf, dtype=torch.float32, device=dev)
            t[f"{m}_hist"] = torch.zeros((n, N_BINS), dtype=i64, device=dev)
            t[f"tok_{m}_value"] = torch.full((n, token_k), -torch.inf, dtype=torch.float32, device=dev)
            t[f"tok_{m}_sample"] = torch.full((n, token_k), -1, dtype=i64, device=dev)
            t[f"tok_{m}_pos"] = torch.full((n, token_k), -1, dtype=i64, device=dev)
        t["top_value"] = torch.full((n, top_k), -torch.inf, dtype=torch.float32, device=dev)
        t["top_sample"] = torch.full((n, top_k), -1, dtype=i64, device=dev)
        P, Tm = self.stored_width(self.P), self.stored_width(self.Tm)
        t["top_image_codes"] = torch.zeros((n, top_k, P), dtype=torch.uint8, device=dev)
        t["top_text_codes"] = torch.zeros((n, top_k, Tm), dtype=torch.uint8, device=dev)
        t["random_value"] = torch.zeros((random_k, n), dtype=torch.float32, device=dev)
        t["random_image_codes"] = torch.zeros((random_k, n, P), dtype=torch.uint8, device=dev)
        t["random_text_codes"] = torch.zeros((random_k, n, Tm), dtype=torch.uint8, device=dev)
        self._t = t

    def _configure(self, n, n_patches, max_text, top_k, token_k, random_k, bits, device) -> None:
        """Everything but the arrays."""
        self.n, self.P, self.Tm = n, n_patches, max_text
        self.top_k, self.token_k, self.random_k, self.bits = top_k, token_k, random_k, bits
        dev = torch.device(device)
        self.set_design(sparse=dev.type == "cpu", keep_dtype=dev.type != "cpu")
        self._pending = {"image": CandidateBuffer(), "text": CandidateBuffer(), "top": CandidateBuffer()}
        # Buffer as many candidates as a list holds before merging: merges cost O(1) per candidate.
        # Candidate top samples carry their maps: at most PENDING_TOP_BYTES of them (at LLaVA's shape
        # n * top_k would be as large as the state itself).
        top_limit = min(n * top_k * PENDING_SHARE, PENDING_TOP_BYTES / (self.stored_width(n_patches) + self.stored_width(max_text) + 20))
        self._limit = {"image": int(n * token_k * PENDING_SHARE), "text": int(n * token_k * PENDING_SHARE), "top": max(1, int(top_limit))}
        self._floors: dict[str, torch.Tensor] | None = None

    def stored_width(self, length: int) -> int:
        """Bytes a map of `length` codes takes in the state: 4-bit codes are packed two to a byte, as on disk."""
        return (length + 1) // 2 if self.bits == 4 else length

    def store(self, codes: torch.Tensor) -> torch.Tensor:
        """Maps [..., length] of uint8 codes in the state's form (packed when 4-bit: half the memory)."""
        return store_codes(codes, self.bits)

    def unstore(self, stored: torch.Tensor, length: int) -> torch.Tensor:
        """The codes [..., length] of maps in the state's form."""
        return map_codes(stored, length, self.bits)

    def set_design(self, sparse: bool, keep_dtype: bool) -> None:
        """How batches are reduced: as on a CPU (sparse, float32) or a GPU (dense, model dtype).

        Both give the same results, but for float32 rounding in the sums.
        sparse: skip what cannot enter a top-k by data-dependent selection, free on a CPU, a
        device sync on a GPU; keep_dtype: reduce float16/bfloat16 activations as they are, half
        the bytes of float32 in every pass (slow arithmetic on a CPU).
        """
        self.sparse, self.keep_dtype = sparse, keep_dtype
        self.scratch = SCRATCH if sparse else FRESH

    def _with_arrays(self, n: int, t: dict[str, torch.Tensor]) -> "LayerState":
        """A LayerState like this one (but for `n` neurons) over the arrays `t`, which it does not copy."""
        state = LayerState.__new__(LayerState)
        state._configure(n, self.P, self.Tm, self.top_k, self.token_k, self.random_k, self.bits, t["top_value"].device)
        state.set_design(self.sparse, self.keep_dtype)
        state._t = t
        return state

    @staticmethod
    def concat(states: "list[LayerState]") -> "LayerState":
        """One LayerState whose neurons are those of `states`, side by side (same batches seen)."""
        first = states[0]
        ts = [s.t for s in states]
        t = {}
        for name in ts[0]:
            axis = neuron_axis(name)
            if axis is None:
                if any(not torch.equal(u[name], ts[0][name]) for u in ts):
                    raise ValueError(f"the states have seen different data ({name} differs)")
                t[name] = ts[0][name].clone()
            else:
                t[name] = torch.cat([u[name] for u in ts], axis)
        return first._with_arrays(sum(s.n for s in states), t)

    def split(self, sizes: "list[int]") -> "list[LayerState]":
        """LayerStates over consecutive runs of `sizes` neurons: views of this one's arrays (exact: buffers merged first)."""
        t = self.t
        out, start = [], 0
        for size in sizes:
            part = {name: v if neuron_axis(name) is None else v.narrow(neuron_axis(name), start, size) for name, v in t.items()}
            out.append(self._with_arrays(size, part))
            start += size
        return out

    @property
    def t(self) -> dict[str, torch.Tensor]:
        """All arrays by name, exact (buffered candidates merged in). Writable."""
        self.flush()
        self._floors = None  # the caller may write: recompute the lower bounds before the next batch
        return self._t

    def flush(self) -> None:
        """Merge the buffered candidates into the top-k lists."""
        for m in MODALITIES:
            self._flush_tokens(m)
        self._flush_top()

    # --- one batch -----------------------------------------------------------
    def _padding_filler(self, txt: torch.Tensor, text_valid: torch.Tensor):
        """A function that sets the padding of txt [B, w, N] to a value: whole rows on a CPU, a mask (no sync) on a GPU."""
        if self.sparse:
            rows = (~text_valid).view(-1).nonzero().view(-1)
            return lambda value: txt.view(-1, self.n).index_fill_(0, rows, value)
        padding = ~text_valid[:, :, None]
        return lambda value: txt.masked_fill_(padding, value)

    def update(self, acts: torch.Tensor, image_pos: torch.Tensor, text_pos: torch.Tensor, text_valid: torch.Tensor,
               samples: torch.Tensor, random_slots: list[tuple[int, int]], image_valid: torch.Tensor | None = None) -> None:
        """Fold a batch in. acts [B, T, N]; image_pos [B, P]; text_pos/text_valid [B, Tm]; samples [B].

        image_valid [B, P]: which image positions are real, where samples have fewer image tokens
        than P (a grid that varies per input); None: all are.

        Top-k records live in unordered slots during collection: a batch writes only the
        (neuron, slot) pairs it takes over, so the cost after warm-up is a few gathers, not a
        rewrite of every neuron's maps. Saving sorts them into the canonical order.
        """
        text_pos, text_valid = trim_text(text_pos, text_valid)
        self.update_tokens(*self.gather(acts, image_pos, text_pos), text_valid, samples, random_slots, image_valid)

    def gather(self, acts: torch.Tensor, image_pos: torch.Tensor, text_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's patch and text tokens of acts [B, T, N] as [B, P, N] and [B, w, N] (text already trimmed).

        float32, or float16/bfloat16 as they came with `keep_dtype`.
        """
        keep = self.keep_dtype and acts.dtype in (torch.float16, torch.bfloat16)
        out = []
        for name, pos in (("img", image_pos), ("txt", text_pos)):
            vals = gather_tokens(acts, pos, self.scratch(name, (pos.numel(), self.n), acts.dtype, acts.device))
            out.append(vals if keep else vals.float())
        return tuple(out)

    def update_tokens(self, img: torch.Tensor, txt: torch.Tensor, text_valid: torch.Tensor, samples: torch.Tensor,
                      random_slots: list[tuple[int, int]], image_valid: torch.Tensor | None = None) -> None:
        """Fold a batch in from its gathered tokens: img [B, P, N] and txt [B, w, N] (float32; txt is overwritten,
        and img too where image_valid [B, P] marks padding)."""
        t = self._t
        B, n, width = img.shape[0], self.n, txt.shape[1]
        fill_padding = self._padding_filler(txt, text_valid)
        n_text = text_valid.sum()  # a tensor: no device sync
        if image_valid is None:  # every sample has P image tokens
            fill_image_padding, image_rows, n_image = None, img.view(-1, n), B * self.P
        else:
            fill_image_padding = self._padding_filler(img, image_valid)
            image_rows, n_image = self._text_rows(img, fill_image_padding, image_valid, "img_valid"), image_valid.sum()
        for m, flat, n_tokens in (("image", image_rows, n_image), ("text", self._text_rows(txt, fill_padding, text_valid), n_text)):
            t[f"{m}_count"] += n_tokens
            if flat.numel() == 0:
                continue
            for rows in self._row_chunks(flat):  # the moments' and histogram's temporaries: a chunk of rows at a time
                total, squares = self._moments(rows)
                t[f"{m}_sum"] += total.double()
                t[f"{m}_sumsq"] += squares.double()
                t[f"{m}_hist"] += bin_counts(rows, self.scratch)
        if width and not self.sparse:
            t["text_hist"][:, ZERO_BIN] -= B * width - n_text  # the padding's zeros (see _text_rows)
        fill_padding(-torch.inf)  # from here on padding never wins a max, a top-k or a code
        if fill_image_padding is not None:
            if not self.sparse:
                t["image_hist"][:, ZERO_BIN] -= B * self.P - n_image
            fill_image_padding(-torch.inf)
        # Each sample's largest activation per neuron [B, N], by modality and overall: what the
        # maxima, the top samples and the token pre-selection read.
        img_max = img.amax(1).float()
        txt_max = txt.amax(1).float() if width else None
        t["image_max"] = torch.maximum(t["image_max"], img_max.amax(0))
        smax = img_max
        if width:
            t["text_max"] = torch.maximum(t["text_max"], txt_max.amax(0))
            smax = torch.maximum(img_max, txt_max)
        for m, vals, vmax in (("image", img, img_max), ("text", txt, txt_max)):
            if vals.shape[1]:
                if self.sparse:
                    self._offer_tokens(m, vals, vmax, samples)
                else:
                    self._fold_tokens_dense(m, vals, samples)
        (self._offer_top if self.sparse else self._update_top_dense)(smax, samples, img, txt)
        for slot, b in random_slots:
            scale = smax[b][:, None]
            t["random_value"][slot] = smax[b]
            t["random_image_codes"][slot] = self.store(quantize(img[b].T, scale, self.bits))
            text_codes = quantize(txt[b].T, scale, self.bits)  # [N, width]: padding is -inf, code 0
            t["random_text_codes"][slot] = self.store(torch.nn.functional.pad(text_codes, (0, self.Tm - width)))

    def _text_rows(self, txt: torch.Tensor, fill_padding, text_valid: torch.Tensor, scratch: str = "txt_valid") -> torch.Tensor:
        """The rows [tokens, n] of txt [B, w, n] that the text statistics read.

        On a CPU a copy of the valid tokens alone (padding is often a third of the text);
        on a GPU all rows, padding set to 0 (no sync), which adds nothing to the sums and is
        taken out of the histogram's bin of 0 afterwards.
        """
        rows = txt.view(-1, self.n)
        if not self.sparse:
            fill_padding(0.0)
            return rows
        valid = text_valid.reshape(-1).nonzero().view(-1)
        return torch.index_select(rows, 0, valid, out=self.scratch(scratch, (valid.numel(), self.n), rows.dtype, rows.device))

    def _row_chunks(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """flat [tokens, n] in chunks of rows of at most STATS_CHUNK_BYTES (float32) on a CPU, where each of the
        four temporaries of the moments and the histogram would otherwise be as large as the batch (400 MB
        each at LLaVA's shape); whole on a GPU, whose allocator frees them at once."""
        if not self.sparse:
            return [flat]
        step = max(1, STATS_CHUNK_BYTES // max(4 * flat.shape[1], 1))
        return list(flat.split(step)) if flat.shape[0] > step else [flat]

    def _moments(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per neuron, the sum and the sum of squares of flat [tokens, n], as float32 partial sums (accumulated in float64).

        (sum(dtype=float64) would convert every value first.) On a GPU float16/bfloat16 are read
        as they are and summed in float32 inside the reduction (no float32 copy); the squares too,
        through the 2-norm, whose CUDA kernel accumulates like the sum's. A CPU's norm kernel adds
        up serially (100x the rounding error of a sum: a variance of a large mean with a small
        spread came out a fifth of the truth), so there the squares come from a float32 copy.
        """
        if flat.dtype != torch.float32 and flat.device.type != "cpu":
            norm = torch.linalg.vector_norm(flat, 2, dim=0, dtype=torch.float32)
            return flat.sum(0, dtype=torch.float32), norm * norm
        flat = flat.float()
        square = torch.mul(flat, flat, out=self.scratch("square", flat.shape, flat.dtype, flat.device))
        return flat.sum(0), square.sum(0)

    def _token_key(self, m: str, sample: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """A token's place in the total order among equal values: sample, then position (ascending); -1 for an empty slot."""
        return torch.where(sample < 0, -1, sample * self._key_base(m) + pos)

    def _key_base(self, m: str) -> int:
        return (self.P if m == "image" else self.Tm) + 1

    def _merge_tokens(self, m: str, rows: torch.Tensor | None, value: torch.Tensor, key: torch.Tensor) -> None:
        """Fold candidate tokens (value and key [M, c]) into the kept exemplars of `rows` (None: all neurons)."""
        t = self._t
        names = (f"tok_{m}_value", f"tok_{m}_sample", f"tok_{m}_pos")
        kept_value, kept_sample, kept_pos = (t[n] if rows is None else t[n][rows] for n in names)
        cand_value = torch.cat([kept_value, value], 1)
        cand_key = torch.cat([self._token_key(m, kept_sample, kept_pos), key], 1)
        idx = top_order(cand_value, cand_key, self.token_k)
        best_key, base = torch.gather(cand_key, 1, idx), self._key_base(m)
        new = (torch.gather(cand_value, 1, idx), torch.where(best_key < 0, -1, best_key // base),
               torch.where(best_key < 0, -1, best_key % base))
        for n, v in zip(names, new):  # in place: arrays made outside inference mode stay writable outside it
            if rows is None:
                t[n].copy_(v)
            else:
                t[n][rows] = v

    def _sample_codes(self, value, b, n, img, txt):
        """The patch and text maps of samples b on neurons n, on the sample's own scale, in the state's form.

        [c, P] and [c, w] codes (text cut to the batch's width), packed to half that when 4-bit.
        """
        scale = value[:, None]  # the sample's maximum (quantize reads relu)
        step = max(1, STATS_CHUNK_BYTES // (4 * max(self.P, 1))) if self.sparse else b.numel()
        if b.numel() <= step:
            image_codes = quantize(img[b, :, n], scale, self.bits)
            text_codes = quantize(txt[b, :, n], scale, self.bits)  # text padding is -inf: code 0
            return self.store(image_codes), self.store(text_codes)
        # on a CPU a chunk of samples at a time: early on every (sample, neuron) pair enters, and their float
        # maps would take as much memory as the batch (400 MB at LLaVA's shape, twice over in quantize)
        parts = [(self.store(quantize(img[b[i : i + step], :, n[i : i + step]], scale[i : i + step], self.bits)),
                  self.store(quantize(txt[b[i : i + step], :, n[i : i + step]], scale[i : i + step], self.bits)))
                 for i in range(0, b.numel(), step)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _take_slots(self, rows, new_v, new_s):
        """Which kept top slots the candidates [M, c] of `rows` (None: all) take over.

        Returns (neuron, slot, chosen) with chosen [M, c] marking the candidates that enter, in
        the same row-major order as (neuron, slot); None when nothing enters.
        """
        t, k = self._t, self.top_k
        top_v, top_s = (t["top_value"], t["top_sample"]) if rows is None else (t["top_value"][rows], t["top_sample"][rows])
        cand_v = torch.cat([top_v, new_v], 1)  # [M, k + c]
        cand_s = torch.cat([top_s, new_s], 1)
        idx = top_order(cand_v, cand_s, k, ordered=False)  # slots are unordered: which, not in what order
        chosen = torch.zeros_like(cand_v, dtype=torch.bool).scatter_(1, idx, True)
        # Each neuron loses as many old slots as it gains candidates: pair them in order.
        m_sel, slot = (~chosen[:, :k]).nonzero(as_tuple=True)
        if m_sel.numel() == 0:
            return None
        return (m_sel if rows is None else rows[m_sel]), slot, chosen[:, k:]

    def _write_slots(self, n_sel, slot, value, sample, image_codes, text_codes) -> None:
        t = self._t
        t["top_value"][n_sel, slot] = value
        t["top_sample"][n_sel, slot] = sample
        t["top_image_codes"][n_sel, slot] = image_codes
        t["top_text_codes"][n_sel, slot] = torch.nn.functional.pad(text_codes, (0, t["top_text_codes"].shape[2] - text_codes.shape[1]))

    def canonical_top(self) -> dict[str, torch.Tensor]:
        """The top-k arrays sorted per neuron: value descending, then sample ascending."""
        return _best_top(self.t, self.top_k)

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
            self._merge_tokens(m, None, o[f"tok_{m}_value"], self._token_key(m, o[f"tok_{m}_sample"], o[f"tok_{m}_pos"]))
        t.update(_best_top({name: torch.cat([t[name], o[name]], 1) for name in TOP_NAMES}, self.top_k))
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
    def from_numpy(cls, arrays: dict[str, np.ndarray], *, n_patches: int, max_text: int, top_k: int, token_k: int,
                   random_k: int, bits: int, device: str | torch.device = "cpu") -> "LayerState":
        """A LayerState over `arrays` as `to_numpy` gives them (maps in the state's form)."""
        n = arrays["top_value"].shape[0]
        state = cls(n, n_patches, max_text, top_k, token_k, random_k, bits, device)
        for name, length in (("top_image_codes", n_patches), ("top_text_codes", max_text), ("random_image_codes", n_patches),
                             ("random_text_codes", max_text)):
            if arrays[name].shape[-1] != state.stored_width(length):
                raise ValueError(f"{name} holds maps {arrays[name].shape[-1]} bytes wide; {length} {bits}-bit codes take "
                                 f"{state.stored_width(length)} in a LayerState (4-bit codes are packed two to a byte)")
        for k, v in arrays.items():
            state.t[k] = torch.from_numpy(np.array(v, copy=True)).to(device)  # writable, 0-d kept
        return state
