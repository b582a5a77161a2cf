"""How a batch is folded into a LayerState's top-k lists: two strategies with the same exact results.

SparseFold (a CPU): a batch only picks out the candidates that can still enter a list (at or
above a lower bound of each neuron's k-th best), buffers them, and merges the buffer in when
it grows; data-dependent selection is free on a CPU. DenseFold (a GPU): fixed shapes, every
(sample, neuron) pair competes, no device sync. LayerState mixes both in and picks one by
`set_design`; the shared merge steps (`_merge_tokens`, `_take_slots`, `_write_slots`) are its own.
"""

from __future__ import annotations

import torch

from neuronwidgets.constants import MODALITIES
from neuronwidgets.reduce.topk import PACKED_KEY_LIMIT, group_by_row, nan_loses, padded, top_order

#: On a CPU, the most bytes of candidate tokens (float32) picked out of a batch at a time.
CANDIDATE_CHUNK_BYTES = 64 << 20


class SparseFold:
    """Candidate buffering for a CPU: only what can still enter a top-k list is looked at."""

    def _lower_bounds(self) -> dict[str, torch.Tensor]:
        """Per neuron, values below which nothing can enter a list: its k-th best kept (-inf until full)."""
        if self._floors is None:
            t = self._t
            self._floors = {m: t[f"tok_{m}_value"][:, -1].clone() for m in MODALITIES}  # kept lists are sorted
            self._floors["top"] = t["top_value"].amin(1)  # top slots are unordered
        return self._floors

    def _offer_tokens(self, m: str, vals: torch.Tensor, vmax: torch.Tensor, samples: torch.Tensor) -> None:
        """Buffer the tokens of vals [B, w, N] that can still enter a neuron's exemplars: those at or above its bound.

        After a few batches almost no token beats a neuron's k-th best, so almost nothing is
        kept; the samples' maxima vmax [B, N] rule out most (sample, neuron) pairs before any
        token is looked at. Ties are kept, so the merged result is the exact total order.
        """
        k = self.token_k
        floors = self._lower_bounds()
        floor = floors[m]
        filling = bool(torch.isneginf(floor).any())
        if filling and vals.shape[0] * vals.shape[1] >= k:  # the batch's own k-th best is a lower bound too
            flat = vals.view(-1, vals.shape[2])
            if bool(vmax.isnan().any()):  # (a copy of the batch only where a NaN must lose)
                flat = flat.nan_to_num(nan=-torch.inf)
            kth = torch.topk(flat, k, dim=0).values[-1]
            floor = floors[m] = torch.maximum(floor, kth)
        pair = vmax.T >= floor[:, None]  # [N, B]: neuron-major, so the candidates come sorted by neuron
        pair |= vmax.T.isnan()  # a NaN hides the sample's other tokens from its maximum
        n, b = pair.nonzero(as_tuple=True)
        if b.numel() == 0:
            return
        # A chunk of pairs at a time: while the lists fill, every pair is a candidate, and their tokens
        # ([pairs, w] floats) would take as much memory as the batch (400 MB at LLaVA's shape).
        step = max(1, CANDIDATE_CHUNK_BYTES // (4 * max(vals.shape[1], 1)))
        for lo in range(0, b.numel(), step):
            nc, bc = n[lo : lo + step], b[lo : lo + step]
            seg = vals[bc, :, nc]  # [pairs, w]
            enters = seg >= floor[nc][:, None]
            if filling:
                enters &= seg > -torch.inf  # -inf marks padding
            i, p = enters.nonzero(as_tuple=True)
            if i.numel():
                self._pending[m].add(nc[i], seg[i, p], self._token_key(m, samples[bc[i]], p))
        if self._pending[m].size >= self._limit[m]:
            self._flush_tokens(m)

    def _flush_tokens(self, m: str) -> None:
        taken = self._pending[m].take()
        if taken is None:
            return
        runs, (value, key) = taken
        group = group_by_row(runs, self.n)
        # padding: value -inf and the largest key lose to every kept entry, empty ones included
        self._merge_tokens(m, group[0], padded(group, value, -torch.inf), padded(group, key, PACKED_KEY_LIMIT - 1))
        if self._floors is not None:
            self._floors[m] = self._t[f"tok_{m}_value"][:, -1].clone()

    def _offer_top(self, smax, samples, img, txt) -> None:
        """Buffer the (sample, neuron) pairs at or above the neuron's bound, with their quantised maps."""
        floors = self._lower_bounds()
        n, b = (smax.T >= floors["top"][:, None]).nonzero(as_tuple=True)  # [N, B], neuron-major
        if n.numel():
            value = smax[b, n]
            image_codes, text_codes = self._sample_codes(value, b, n, img, txt)
            self._pending["top"].add(n, value, samples[b], image_codes, text_codes)
        if self._pending["top"].size >= self._limit["top"]:
            self._flush_top()

    def _flush_top(self) -> None:
        taken = self._pending["top"].take()
        if taken is not None:
            runs, (value, sample, image_codes, text_codes) = taken
            group = group_by_row(runs, self.n)
            new_s = padded(group, sample, PACKED_KEY_LIMIT - 1)  # padding: loses to any slot, even an empty one
            slots = self._take_slots(group[0], padded(group, value, -torch.inf), new_s)
            if slots is not None:
                n_sel, slot, chosen = slots
                c = padded(group, torch.arange(value.numel(), device=value.device), 0)[chosen]  # row-major, as n_sel
                self._write_slots(n_sel, slot, value[c], sample[c], image_codes[c], text_codes[c])
        if self._floors is not None:
            self._floors["top"] = self._t["top_value"].amin(1)


class DenseFold:
    """Fixed-shape folds for a GPU: every candidate competes, nothing waits on the device."""

    def _fold_tokens_dense(self, m: str, vals: torch.Tensor, samples: torch.Tensor) -> None:
        """Token exemplars from vals [B, w, N] with fixed shapes: the batch's best k per neuron, then the exact order.

        A pre-selection by topk may cut through equal values at its k-th place, keeping
        whichever of them topk picks: it looks one place further, and the (few) neurons where
        the k-th and the next value are equal are selected again in the exact total order.
        A NaN never enters (as on the sparse path): topk ranks it first, so a neuron with one
        among its picks is selected again with NaN read as -inf.
        """
        B, w, n = vals.shape
        k = self.token_k
        flat_v = vals.permute(2, 0, 1).reshape(n, B * w)  # column r = (sample r // w, position r % w)
        keys = self._token_key(m, samples.repeat_interleave(w), torch.arange(w, device=vals.device).repeat(B))  # [B * w]
        if flat_v.shape[1] > k:
            # Pre-select the batch's best tokens (linear time) before the exact total-order sort.
            # (topk along the last axis of the transposed copy measured faster on an H100 than along axis 0.)
            best = torch.topk(flat_v, k + 1, dim=1, sorted=True)
            pick = best.indices[:, :k]
            # (ties at -inf, text padding, never matter: such a token never enters)
            again = (best.values[:, k - 1] == best.values[:, k]) & (best.values[:, k] > -torch.inf) | best.values.isnan().any(1)
            again = again.nonzero().view(-1)  # a device sync
            if again.numel():
                pick[again] = top_order(nan_loses(flat_v[again].float()), keys.expand(again.numel(), -1), k)
            flat_v = torch.gather(flat_v, 1, pick)
        else:
            pick = torch.arange(flat_v.shape[1], device=flat_v.device)[None].expand(n, -1)
        self._merge_tokens(m, None, nan_loses(flat_v), keys[pick])

    def _update_top_dense(self, smax, samples, img, txt) -> None:
        """Top samples with fixed shapes: every (sample, neuron) pair competes (a NaN as -inf: it never enters)."""
        new_s = samples[None].expand(self.n, -1)
        taken = self._take_slots(None, nan_loses(smax.T), new_s)
        if taken is None:
            return
        n_sel, slot, chosen = taken
        b = torch.arange(smax.shape[0], device=smax.device)[None].expand(self.n, -1)[chosen]
        value = smax[b, n_sel]
        self._write_slots(n_sel, slot, value, samples[b], *self._sample_codes(value, b, n_sel, img, txt))
