"""Trace-driven cache simulation (``meshcast bench cache``): replays an access log through
each eviction policy using the edge's own ``Tier`` code, streaming the trace."""

from __future__ import annotations

import csv
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.cache import CachedObject, Tier
from edge.ml_policy import DemandTracker, MlPolicy
from edge.policies import POLICIES, EvictionPolicy

TRACE_HEADER = ["ts", "client", "path", "bytes"]
LATENCY_SAMPLES = 20_000


class TraceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Access:
    ts: float
    client: str
    path: str
    size: int


def read_trace(path: Path) -> Iterator[Access]:
    """Stream a ``ts,client,path,bytes`` CSV (DESIGN.md), one row at a time."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != TRACE_HEADER:
            raise TraceError(f"{path}: expected header {','.join(TRACE_HEADER)}, got {header}")
        for line, row in enumerate(reader, start=2):
            try:
                yield Access(float(row[0]), row[1], row[2], int(row[3]))
            except (IndexError, ValueError) as exc:
                raise TraceError(f"{path}:{line}: malformed row {row!r}") from exc


def object_sizes(path: Path) -> dict[str, int]:
    """Largest response size seen per path: the objects that exist in this trace."""
    sizes: dict[str, int] = {}
    for access in read_trace(path):
        if access.size > sizes.get(access.path, -1):
            sizes[access.path] = access.size
    return sizes


def working_set_bytes(path: Path) -> int:
    return sum(object_sizes(path).values())


_SEGMENT = re.compile(r"(.*/)(\d+)\.m4s")


def next_segment(path: str) -> str | None:
    """/live/NAME/720p/41.m4s -> /live/NAME/720p/42.m4s (the same rendition)."""
    match = _SEGMENT.fullmatch(path)
    return f"{match.group(1)}{int(match.group(2)) + 1}.m4s" if match else None


def parse_cache_size(text: str, trace: Path) -> int:
    """``10%`` of the trace's working set (distinct bytes), or a byte count."""
    if text.endswith("%"):
        return int(working_set_bytes(trace) * float(text[:-1]) / 100)
    from meshcast.sizes import parse_size

    return parse_size(text)


@dataclass
class Result:
    requests: int = 0
    hits: int = 0
    bytes_requested: int = 0
    bytes_hit: int = 0
    origin_bytes: int = 0
    prefetched_unused_bytes: int = 0
    _latencies: list[int] = field(default_factory=list)
    _seen: int = 0

    def record_latency(self, ns: int, rng: random.Random) -> None:
        # Reservoir sample: bounded memory whatever the trace length.
        self._seen += 1
        if len(self._latencies) < LATENCY_SAMPLES:
            self._latencies.append(ns)
        else:
            slot = rng.randrange(self._seen)
            if slot < LATENCY_SAMPLES:
                self._latencies[slot] = ns

    def to_json(self) -> dict[str, Any]:
        lat = sorted(self._latencies)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] / 1000, 3) if lat else 0.0

        return {
            "requests": self.requests,
            "byte_miss_ratio": round(1 - self.bytes_hit / self.bytes_requested, 6)
            if self.bytes_requested
            else 0.0,
            "object_miss_ratio": round(1 - self.hits / self.requests, 6) if self.requests else 0.0,
            "origin_bytes": self.origin_bytes,
            "prefetched_unused_bytes": self.prefetched_unused_bytes,
            "decision_us_p50": pct(0.50),
            "decision_us_p99": pct(0.99),
        }


def simulate(trace: Path, policy: str, capacity: int, hits_out: list[bool] | None = None) -> Result:
    """Replay ``trace``. ``prefetch`` is LRU that, on every segment request, also fetches
    the next segment of the same rendition (if that object exists in the trace); prefetched
    bytes count as origin bytes, and a prefetched object requested later is a hit."""
    tracker = DemandTracker() if policy == "ml" else None
    now = 0.0
    ml = MlPolicy(capacity, tracker, clock=lambda: now) if tracker is not None else None
    prefetch = policy == "prefetch"
    sizes = object_sizes(trace) if prefetch else {}
    prefetched: dict[str, int] = {}  # prefetched, not yet requested
    base = "lru" if prefetch else policy
    evictor: EvictionPolicy = ml if ml is not None else POLICIES[base](capacity)
    tier = Tier(policy, capacity, evictor)
    result = Result()
    rng = random.Random(0)
    clock = time.perf_counter_ns
    for access in read_trace(trace):
        now = access.ts  # the model's features follow trace time
        start = clock()
        if tracker is not None:
            tracker.observe(access.path, access.size, now)
        hit = access.path in tier.entries
        if hit:
            tier.policy.accessed(access.path)
        elif 0 < access.size <= capacity:
            tier.add(CachedObject(access.path, access.size, "", None, None, 0.0, None))
        if prefetch:
            prefetched.pop(access.path, None)
            following = next_segment(access.path)
            size = sizes.get(following or "", 0)
            if following and following not in tier.entries and 0 < size <= capacity:
                tier.add(CachedObject(following, size, "", None, None, 0.0, None))
                prefetched[following] = size
                result.origin_bytes += size
        result.record_latency(clock() - start, rng)
        result.requests += 1
        result.bytes_requested += access.size
        if hit:
            result.hits += 1
            result.bytes_hit += access.size
        else:
            result.origin_bytes += access.size
        if hits_out is not None:
            hits_out.append(hit)
    result.prefetched_unused_bytes = sum(prefetched.values())
    return result


def run_all(trace: Path, capacity: int) -> dict[str, Any]:
    return {
        "trace": str(trace),
        "cache_bytes": capacity,
        "policies": {
            name: simulate(trace, name, capacity).to_json()
            for name in [*POLICIES, "ml", "prefetch"]
        },
    }
