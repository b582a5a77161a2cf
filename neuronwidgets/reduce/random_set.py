"""The random sample set: a bottom-k hash sketch, identical however the data is split."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


# --- the random sample set: a bottom-k hash sketch, identical however the data is split ----------
def random_key(seed: int, sample: int) -> int:
    digest = hashlib.sha1(f"{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class RandomSet:
    """The `k` samples with the smallest hash: a fixed random subset that merges exactly."""

    def __init__(self, k: int, seed: int, entries: Sequence[tuple[int, int, int]] = ()) -> None:
        self.k, self.seed = k, seed
        self.entries = [tuple(e) for e in entries]  # (hash, sample, slot)

    def offer(self, sample: int) -> int | None:
        """Add `sample` if it belongs in the set; return the slot its record goes to."""
        if self.k == 0:
            return None
        h = random_key(self.seed, sample)
        if len(self.entries) < self.k:
            slot = len(self.entries)
        else:
            worst = max(self.entries)
            if h >= worst[0]:
                return None
            self.entries.remove(worst)
            slot = worst[2]
        self.entries.append((h, sample, slot))
        return slot

    def canonical(self) -> list[tuple[int, int, int]]:
        return sorted(self.entries)
