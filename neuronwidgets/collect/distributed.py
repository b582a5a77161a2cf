"""Sharding a collection over torchrun processes: which batches a rank takes, and agreement checks."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Rank:
    """The rank and world size torchrun sets (RANK, WORLD_SIZE); (0, 1) when run alone."""
    return Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def shard_positions(n: int, batch_size: int, rank: Rank) -> list[int]:
    """Whole batches, dealt round-robin: each rank runs exactly the batches a single process would."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return [i for b in batches[rank.rank :: rank.world] for i in b]


def init(rank: Rank, device: str) -> None:
    import torch.distributed as dist

    if rank.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def barrier(rank: Rank) -> None:
    import torch.distributed as dist

    if rank.world > 1 and dist.is_initialized():
        dist.barrier()


def check_agreement(rank: Rank, settings: dict) -> None:
    """Every rank must run the same model, data and arguments: else stop all with the differences."""
    if rank.world == 1:
        return
    import torch.distributed as dist

    mine = json.dumps(settings, sort_keys=True, default=str)
    gathered: list[str | None] = [None] * rank.world
    dist.all_gather_object(gathered, mine)
    if len(set(gathered)) > 1:
        first = json.loads(gathered[0])
        diffs = []
        for r, g in enumerate(gathered):
            other = json.loads(g)
            for k in sorted(set(first) | set(other)):
                if first.get(k) != other.get(k):
                    diffs.append(f"rank {r} {k}={other.get(k)!r} (rank 0: {first.get(k)!r})")
        raise RuntimeError("ranks disagree on model or arguments: " + "; ".join(diffs))


def on_main(rank: Rank, fn: Callable[[], T]) -> T:
    """fn() run by the main rank alone (it may write files); every rank gets its result or raises its error,
    so no rank waits at a barrier for one that failed."""
    if rank.world == 1:
        return fn()
    import torch.distributed as dist

    box = [None]
    if rank.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as err:  # handed to every rank, raised there
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def settings_digest(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def finish(rank: Rank) -> None:
    import torch.distributed as dist

    if rank.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
