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
            return self._forget(key)

    def _forget(self, key: str) -> str:
        self._freq.pop(key, None)
        return key


class _Node:
    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: str) -> None:
        self.key = key
        self.older: _Node | None = None
        self.newer: _Node | None = None
        self.visited = False


class SievePolicy:
    """O(1) per operation: a doubly linked FIFO and a hand that walks from old to new."""

    def __init__(self, capacity: int = 0) -> None:
        self._nodes: dict[str, _Node] = {}
        self._oldest: _Node | None = None
        self._newest: _Node | None = None
        self._hand: _Node | None = None  # None: start from the oldest

    def inserted(self, key: str, size: int) -> None:
        node = _Node(key)
        node.older = self._newest
        if self._newest is not None:
            self._newest.newer = node
        self._newest = node
        if self._oldest is None:
            self._oldest = node
        self._nodes[key] = node

    def accessed(self, key: str) -> None:
        node = self._nodes.get(key)
        if node is not None:
            node.visited = True

    def removed(self, key: str) -> None:
        node = self._nodes.pop(key, None)
        if node is None:
            return
        if self._hand is node:
            self._hand = node.newer
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._oldest = node.newer
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._newest = node.older

    def victim(self) -> str:
        node = self._hand or self._oldest
        if node is None:
            raise LookupError("SIEVE: nothing to evict")
        while node.visited:
            node.visited = False
            node = node.newer or self._oldest
            assert node is not None
        self._hand = node.newer
        return node.key


POLICIES = {"lru": LruPolicy, "s3fifo": S3FifoPolicy, "sieve": SievePolicy}
