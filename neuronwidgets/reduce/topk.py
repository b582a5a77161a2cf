"""Exact top-k in a total order (value, then key), and the candidate buffers that feed it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

#: Candidates buffered before a merge, as a share of the list entries (n * k).
PENDING_SHARE = 1.0


PENDING_TOP_BYTES = 32 << 20


def top_order(values: torch.Tensor, keys: torch.Tensor, k: int, ordered: bool = True) -> torch.Tensor:
    """Per row, the indices of the `k` best entries: value descending, then key ascending (keys >= -1).

    A total order, so ties (identical background patches are common) break the same way
    whatever order the data came in. On a CPU, where checking the keys' range is free, value
    and key are packed into one int64 and selected by one topk (3x faster than two sorts;
    with ordered=False, the k best in any order, several times faster again).
    """
    if values.device.type == "cpu" and keys.numel() and int(keys.max()) < PACKED_KEY_LIMIT:
        return torch.topk(packed_order_key(values, keys), k, dim=1, sorted=ordered).indices
    return sorted_top_order(values, keys, k)


PACKED_KEY_LIMIT = (1 << 32) - 1


def packed_order_key(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """int64 that grows with the value and falls with the key: (value bits, order-preserving) << 32 | ~key.

    values float32; keys in -1 .. 2^32 - 2. -0.0 is read as +0.0 (they tie, as floats do).
    """
    out = torch.sub(PACKED_KEY_LIMIT - 1, keys)  # ~key in the low 32 bits, the high ones 0
    if sys.byteorder == "little":  # the value's bits go straight into the high halves: one new array, not eight
        high = out.view(torch.int32).view(*out.shape, 2)[..., 1]
        bits = torch.add(values.float(), 0.0, out=high.view(torch.float32)).view(torch.int32)  # + 0.0: -0.0 as +0.0
        bits ^= torch.bitwise_right_shift(bits, 31).bitwise_and_(0x7FFFFFFF)  # int32 order == float order
        return out
    bits = (values.float() + 0.0).view(torch.int32)
    return out | ((bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64) << 32)


def sorted_top_order(values: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """top_order by two stable sorts (any key range, no device sync).

    -0.0 is read as +0.0, as in the packed key: CUDA's radix sort puts -0.0 first where a CPU
    ties them (pytorch#162235), and a tie must fall to the keys on every device.
    """
    by_key = torch.argsort(keys, dim=1, stable=True)
    vals = torch.gather(values, 1, by_key) + 0.0
    by_val = torch.argsort(-vals, dim=1, stable=True)
    return torch.gather(by_key, 1, by_val)[:, :k]


def group_by_row(ids: torch.Tensor | Sequence[torch.Tensor], n_rows: int
                 ) -> tuple[torch.Tensor | None, torch.Tensor, tuple[int, int]] | None:
    """Entries by the row (0 .. n_rows - 1) they belong to: (rows, flat, (groups, width)), or None when there are none.

    ids: a tensor, or the runs (a list of tensors) whose concatenation it is; a run whose ids
    ascend is laid out without a sort (candidates arrive neuron by neuron, a run per batch).
    rows: the distinct ids, ascending, or None when most rows have entries: then every row is
    a group (group g is row g), which spares the caller gathering and scattering the rows. Entry
    i goes to [g, s] of a padded [groups, width] array (s: a slot of its own in its group), which
    is flat[i] = g * width + s of the array's flattened form (see `padded`).
    """
    runs = [r for r in (ids if isinstance(ids, (list, tuple)) else [ids]) if r.numel()]
    if not runs:
        return None
    counts = [torch.bincount(r, minlength=n_rows) for r in runs]
    total = counts[0] if len(counts) == 1 else torch.stack(counts).sum(0)
    present = total > 0
    width = int(total.max())
    if int(present.sum()) * 2 > n_rows:
        rows, group_of = None, None
    else:
        rows, group_of = present.nonzero().view(-1), present.cumsum(0) - 1
    flats, before = [], torch.zeros_like(total)  # before: each row's entries in earlier runs
    for run, count in zip(runs, counts):
        order = None if _ascending(run) else torch.argsort(run.to(torch.int32), stable=True)  # int32: a third faster
        ordered = run if order is None else run.index_select(0, order)
        # in a run sorted by row, an entry's slot is its place after the row's first entry, after earlier runs' entries
        slot = torch.arange(run.numel(), device=run.device) + (before - (count.cumsum(0) - count))[ordered]
        flat = (ordered if group_of is None else group_of[ordered]) * width + slot
        flats.append(flat if order is None else torch.empty_like(flat).index_copy_(0, order, flat))
        before += count
    return rows, flats[0] if len(flats) == 1 else torch.cat(flats), (n_rows if rows is None else rows.numel(), width)


def _ascending(ids: torch.Tensor) -> bool:
    return ids.numel() < 2 or bool((ids[1:] >= ids[:-1]).all())


def padded(group: tuple[torch.Tensor | None, torch.Tensor, tuple[int, int]], values: torch.Tensor, fill: float) -> torch.Tensor:
    """The grouped entries' `values` laid out as `group_by_row`'s padded [groups, width] array, `fill` elsewhere."""
    _, flat, shape = group
    out = torch.full(shape, fill, dtype=values.dtype, device=values.device)
    out.view(-1).index_copy_(0, flat, values)
    return out


class CandidateBuffer:
    """Candidates for one kind of top-k list, buffered between merges: columns of equal length, the neuron first
    (ascending within a part spares the merge a sort).

    A column may be 2-D with a width that differs from part to part (text maps cut to each
    batch's longest text): parts are padded with zeros to the widest.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.size = 0

    def add(self, *columns: torch.Tensor) -> None:
        self.parts.append(columns)
        self.size += columns[0].numel()

    def take(self) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        """(the neuron column of each part, the other columns concatenated), None when empty; the buffer emptied.

        The neuron columns stay parts: the merge lays them out run by run (see `group_by_row`).
        """
        parts, self.parts, self.size = self.parts, [], 0
        if not parts:
            return None
        cols = []
        for c in list(zip(*parts))[1:]:
            if c[0].dim() == 2:
                width = max(x.shape[1] for x in c)
                c = [torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in c]
            cols.append(torch.cat(c) if len(c) > 1 else c[0])
        return [part[0] for part in parts], cols


def nan_loses(values: torch.Tensor) -> torch.Tensor:
    """values with NaN as -inf (a new tensor): in a top-k list, -inf loses to every entry, empty slots included."""
    return torch.nan_to_num(values, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
