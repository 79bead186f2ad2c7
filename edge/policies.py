"""Eviction policies for the edge cache tiers (and the trace simulator, which drives the very
same tier code, so simulated and live hit/miss sequences agree).

All are byte-aware through the tier: the tier asks ``victim()`` until it fits.
- LRU: least recently used.
- S3-FIFO (Yang et al., SOSP'23): a small FIFO (10% of bytes) filters one-hit wonders, a main
  FIFO with 2-bit frequency reinsertion keeps the rest, a ghost FIFO of evicted keys sends
  returning objects straight to main.
- SIEVE (Zhang et al., NSDI'24): one FIFO with a visited bit and a hand that sweeps from the
  oldest entry, sparing (and clearing) visited ones.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol


class EvictionPolicy(Protocol):
    """Decides which key leaves a full tier."""

    def inserted(self, key: str, size: int) -> None: ...

    def accessed(self, key: str) -> None: ...

    def removed(self, key: str) -> None: ...

    def victim(self) -> str: ...


class LruPolicy:
    def __init__(self, capacity: int = 0) -> None:
        self._order: collections.OrderedDict[str, None] = collections.OrderedDict()

    def inserted(self, key: str, size: int) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def accessed(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def removed(self, key: str) -> None:
        self._order.pop(key, None)

    def victim(self) -> str:
        return next(iter(self._order))


class S3FifoPolicy:
    SMALL_SHARE = 0.10
    MAX_FREQ = 3

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Optional second opinion for objects leaving the small queue unaccessed: True
        # promotes them to main (the learned policy plugs in here).
        self.promote_hint: Callable[[str], bool] | None = None
        # The same for unaccessed objects at the head of main: True reinserts them once.
        self.retain_hint: Callable[[str], bool] | None = None
        self._spared: set[str] = set()
        self._small: collections.OrderedDict[str, int] = collections.OrderedDict()  # key -> size
        self._main: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._freq: dict[str, int] = {}
        self._small_bytes = 0
        # Ghost: keys recently evicted from small (no data, just the key).
        self._ghost: collections.OrderedDict[str, None] = collections.OrderedDict()

    def inserted(self, key: str, size: int) -> None:
        self._freq[key] = 0
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = size
        else:
            self._small[key] = size
            self._small_bytes += size

    def accessed(self, key: str) -> None:
        if key in self._freq:
            self._freq[key] = min(self._freq[key] + 1, self.MAX_FREQ)

    def removed(self, key: str) -> None:
        self._freq.pop(key, None)
        self._spared.discard(key)
        if key in self._small:
            self._small_bytes -= self._small.pop(key)
        self._main.pop(key, None)

    def victim(self) -> str:
        while True:
            if self._small and (
                self._small_bytes > self.SMALL_SHARE * self.capacity or not self._main
            ):
                key, size = self._small.popitem(last=False)
                self._small_bytes -= size
                hint = self.promote_hint
                if self._freq.get(key, 0) > 0 or (hint is not None and hint(key)):
                    self._freq[key] = 0
                    self._main[key] = size  # accessed again while in small: promote
                    continue
                self._ghost[key] = None
                # As many ghost keys as the cache holds objects (the paper sizes it like
                # main, which is ~90% of the entries once warm; early on main is empty).
                while len(self._ghost) > max(len(self._small) + len(self._main) + 1, 1):
                    self._ghost.popitem(last=False)
                return self._forget(key)
            key, size = self._main.popitem(last=False)
            if self._freq.get(key, 0) > 0:
                self._freq[key] -= 1
                self._main[key] = size  # reinsert at the tail
                continue
            retain = self.retain_hint
            if retain is not None and key not in self._spared and retain(key):
                self._spared.add(key)  # once per stay: the loop must end
                self._main[key] = size
                continue
            return self._forget(key)

    def _forget(self, key: str) -> str:
        self._freq.pop(key, None)
        self._spared.discard(key)
        return key


class SievePolicy:
    """O(1) per operation: a FIFO kept as key -> neighbour maps (no node objects, so no
    long reference chains to tear down) and a hand that walks from old to new."""

    def __init__(self, capacity: int = 0) -> None:
        self._newer: dict[str, str | None] = {}
        self._older: dict[str, str | None] = {}
        self._visited: dict[str, bool] = {}
        self._oldest: str | None = None
        self._newest: str | None = None
        self._hand: str | None = None  # None: start from the oldest

    def inserted(self, key: str, size: int) -> None:
        self._older[key] = self._newest
        self._newer[key] = None
        self._visited[key] = False
        if self._newest is not None:
            self._newer[self._newest] = key
        self._newest = key
        if self._oldest is None:
            self._oldest = key

    def accessed(self, key: str) -> None:
        if key in self._visited:
            self._visited[key] = True

    def removed(self, key: str) -> None:
        if key not in self._visited:
            return
        older, newer = self._older.pop(key), self._newer.pop(key)
        del self._visited[key]
        if self._hand == key:
            self._hand = newer
        if older is not None:
            self._newer[older] = newer
        else:
            self._oldest = newer
        if newer is not None:
            self._older[newer] = older
        else:
            self._newest = older

    def victim(self) -> str:
        key = self._hand or self._oldest
        if key is None:
            raise LookupError("SIEVE: nothing to evict")
        while self._visited[key]:
            self._visited[key] = False
            following = self._newer[key] or self._oldest
            assert following is not None
            key = following
        self._hand = self._newer[key]
        return key


POLICIES = {"lru": LruPolicy, "s3fifo": S3FifoPolicy, "sieve": SievePolicy}
