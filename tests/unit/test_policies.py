"""Eviction policies against tiny traces whose hit/miss sequences were worked out by hand
(capacity in objects of 1 byte; see the comments for the SIEVE hand and S3-FIFO queues)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.simulate import TraceError, simulate


def trace(tmp_path: Path, seq: str, size: int = 1) -> Path:
    path = tmp_path / "trace.csv"
    rows = "".join(f"{i}.0,v{i % 3},/live/s/360p/{k}.m4s,{size}\n" for i, k in enumerate(seq))
    path.write_text("ts,client,path,bytes\n" + rows)
    return path


def sequence(path: Path, policy: str, capacity: int) -> str:
    hits: list[bool] = []
    simulate(path, policy, capacity, hits)
    return "".join("H" if h else "M" for h in hits)


@pytest.mark.parametrize(
    ("seq", "capacity", "expected"),
    [
        # LRU: E evicts A (least recent), so the final A misses.
        ("ABCABDEA", 3, {"lru": "MMMHHMMM",
                         # S3-FIFO: D's eviction promotes A and B (accessed in small) to
                         # main and drops C; E drops D from small; A survives in main.
                         "s3fifo": "MMMHHMMH",
                         # SIEVE: D's eviction clears A, B and takes C; the hand restarts at
                         # the oldest, so E takes A (cleared) and A misses.
                         "sieve": "MMMHHMMM"}),
        # A re-requested right away is kept by S3-FIFO (main) and SIEVE (visited), not LRU.
        ("AABCDEAFGA", 4, {"lru": "MHMMMMMMMH", "s3fifo": "MHMMMMHMMH", "sieve": "MHMMMMHMMH"}),
    ],
)  # fmt: skip
def test_hand_checked_sequences(
    tmp_path: Path, seq: str, capacity: int, expected: dict[str, str]
) -> None:
    path = trace(tmp_path, seq)
    for policy, hits in expected.items():
        assert sequence(path, policy, capacity) == hits, policy


def test_scan_resistance_and_byte_accounting(tmp_path: Path) -> None:
    # A hot set of 3 objects interleaved with bursts of 3 one-hit wonders (a scan).
    letters = "abcdefghijklmnopqrstuvwxyz"
    seq = "".join(f"ABC{letters[n % 26]}{letters[(n + 9) % 26]}{letters[(n + 18) % 26]}"
                  for n in range(100))  # fmt: skip
    path = trace(tmp_path, seq, size=1000)
    lru = simulate(path, "lru", 5000)
    s3 = simulate(path, "s3fifo", 5000)
    assert lru.requests == s3.requests == 600
    assert s3.hits > lru.hits  # S3-FIFO filters the scan in its small queue
    assert s3.origin_bytes == (s3.requests - s3.hits) * 1000


def test_bench_cache_cli_json_contract(tmp_path: Path) -> None:
    path = trace(tmp_path, "ABCABDEA" * 20, size=100)
    out = subprocess.run(
        [sys.executable, "-m", "meshcast.cli", "bench", "cache", "--trace", str(path),
         "--cache-size", "50%", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["cache_bytes"] == 250  # 50% of 5 distinct objects x 100 bytes
    for name in ("lru", "s3fifo", "sieve"):
        policy = report["policies"][name]
        assert 0 <= policy["byte_miss_ratio"] <= 1 and 0 <= policy["object_miss_ratio"] <= 1
        assert policy["origin_bytes"] == round(policy["byte_miss_ratio"] * 160 * 100)


def test_malformed_trace_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,client,path,bytes\n1.0,a,/x,notanumber\n")
    with pytest.raises(TraceError, match=r"bad\.csv:2: malformed row"):
        simulate(bad, "lru", 10)
    out = subprocess.run(
        [sys.executable, "-m", "meshcast.cli", "bench", "cache", "--trace", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "malformed row" in out.stderr


def test_gen_trace_is_seeded_and_well_formed(tmp_path: Path) -> None:
    from edge.simulate import read_trace
    from edge.tracegen import Workload, write_trace

    w = Workload(seed=7, duration_s=120, live_streams=4, vod_assets=20, arrivals_per_s=1.0)
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    n = write_trace(w, a)
    write_trace(w, b)
    write_trace(Workload(seed=8, duration_s=120, live_streams=4, vod_assets=20), c)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    rows = list(read_trace(a))
    assert len(rows) == n > 100
    assert all(x.ts <= y.ts for x, y in itertools.pairwise(rows))
    from meshcast.paths import parse_media_path

    assert all(parse_media_path(r.path) is not None for r in rows)  # contract paths only
    first_vod = {}
    for r in rows:
        media = parse_media_path(r.path)
        assert media is not None
        if media.kind == "vod" and media.relative.endswith(".m4s") and r.client not in first_vod:
            first_vod[r.client] = media.relative
    assert first_vod and all(p.endswith("/0.m4s") for p in first_vod.values())  # VOD from 0


def test_edge_cache_uses_the_configured_policy() -> None:
    from edge.cache import TieredCache
    from edge.policies import S3FifoPolicy, SievePolicy

    assert isinstance(TieredCache(1000, policy="sieve").memory.policy, SievePolicy)
    assert isinstance(TieredCache(1000, policy="s3fifo").memory.policy, S3FifoPolicy)


def test_ml_policy_falls_back_then_trains_on_the_trace(tmp_path: Path) -> None:
    from edge.cache import CachedObject, Tier
    from edge.ml_policy import DemandTracker, MlPolicy, load_latest_model
    from edge.simulate import read_trace
    from edge.tracegen import Workload, write_trace

    path = tmp_path / "w.csv"
    write_trace(Workload(seed=3, duration_s=240, live_streams=5, vod_assets=40), path)
    tracker = DemandTracker(retrain_every=5_000, horizon_s=30)
    now = 0.0
    policy = MlPolicy(50_000_000, tracker, clock=lambda: now)
    tier = Tier("ml", 50_000_000, policy)
    evictions_before_model = 0
    for access in read_trace(path):
        now = access.ts
        tracker.observe(access.path, access.size, now)
        if access.path in tier.entries:
            policy.accessed(access.path)
        else:
            trained = tracker.model is not None
            evicted = tier.add(CachedObject(access.path, access.size, "", None, None, 0, None))
            if not trained:
                evictions_before_model += len(evicted)
    assert evictions_before_model > 0  # plain S3-FIFO until the first model
    info = policy.describe()
    assert info["trained"] and info["refits"] >= 1 and info["promotions"] > 0
    assert info["model_version"] == info["refits"]
    assert tier.used <= 50_000_000
    # The model file round-trips and predicts the same.
    assert tracker.model is not None
    tracker.model.save(tmp_path / "models")
    loaded = load_latest_model(tmp_path / "models")
    assert loaded == tracker.model
    x = [float(i) for i in range(len(loaded.coef))]
    assert loaded.probability(x) == tracker.model.probability(x)


def test_demand_tracker_bounds_its_state() -> None:
    from edge.ml_policy import DemandTracker

    tracker = DemandTracker(max_tracked=1000, horizon_s=10)
    for i in range(5000):
        tracker.observe(f"/vod/a/360p/{i}.m4s", 100, float(i))
    assert len(tracker._stats) <= 1000
    assert "/vod/a/360p/4999.m4s" in tracker  # the newest are kept


def test_model_files_of_another_format_are_ignored(tmp_path: Path) -> None:
    from edge.ml_policy import load_latest_model

    (tmp_path / "model-v000009.json").write_text('{"format": 0, "version": 9}')
    (tmp_path / "model-v000010.json").write_text("not json")
    assert load_latest_model(tmp_path) is None


def test_prefetch_next_segment(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    rows = [
        "0,a,/vod/x/360p/0.m4s,100",  # miss, prefetches 1
        "1,a,/vod/x/360p/1.m4s,100",  # hit (prefetched), prefetches 2
        "2,a,/vod/x/360p/2.m4s,100",  # hit, prefetches 3 (exists: requested by b later)
        "3,b,/vod/x/480p/0.m4s,50",  # miss; 480p/1 never appears in the trace: no prefetch
        "4,b,/vod/x/360p/3.m4s,100",  # hit
    ]
    path.write_text("ts,client,path,bytes\n" + "\n".join(rows) + "\n")
    hits: list[bool] = []
    result = simulate(path, "prefetch", 10_000, hits)
    assert hits == [False, True, True, False, True]
    assert result.origin_bytes == 100 * 4 + 50  # 0 on demand + 1, 2, 3 prefetched + 480p/0
    assert result.prefetched_unused_bytes == 0
    lru = simulate(path, "lru", 10_000)
    assert lru.hits == 0 and lru.origin_bytes == 450
