"""Synthetic video access traces (``meshcast bench gen-trace``) in the edge access-log format.

Seeded and reproducible. Models: Zipf-like popularity over live streams and VOD assets that
drifts (ranks reshuffle slowly); a day/night cycle of viewer arrivals; live viewers joining
near the live edge and fetching every segment, with an ABR rung mix and occasional switches;
VOD sessions starting at segment 0 and abandoning after a Weibull watch time; a flash crowd
that makes one stream go viral for a while.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SEGMENT_S = 2.0
# rung -> bytes per 2 s segment (ladder bitrates), audio shared by all rungs
RUNGS = {"720p": 2800 * 250, "480p": 1400 * 250, "360p": 800 * 250}
RUNG_MIX = (("720p", 0.5), ("480p", 0.3), ("360p", 0.2))
AUDIO_BYTES = 128 * 250
PLAYLIST_BYTES = 900


@dataclass(frozen=True, slots=True)
class Workload:
    seed: int = 1
    duration_s: float = 3600.0
    live_streams: int = 20
    vod_assets: int = 300
    vod_segments: int = 900  # 30 min assets
    arrivals_per_s: float = 2.0  # mean viewer arrivals, modulated by the day/night cycle
    vod_share: float = 0.5
    zipf_s: float = 1.1
    day_s: float = 3600.0  # one "day" per hour of trace: the cycle shows in short traces
    flash_at_s: float = 1200.0
    flash_len_s: float = 600.0
    flash_boost: float = 20.0


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(n)]


def _pick_rung(rng: random.Random) -> str:
    x = rng.random()
    for rung, share in RUNG_MIX:
        x -= share
        if x <= 0:
            return rung
    return RUNG_MIX[-1][0]


def generate(w: Workload) -> Iterator[tuple[float, str, str, int]]:
    """Yield (ts, client, path, bytes) in time order."""
    rng = random.Random(w.seed)
    live_order = list(range(w.live_streams))
    vod_order = list(range(w.vod_assets))
    weights_live = _zipf_weights(w.live_streams, w.zipf_s)
    weights_vod = _zipf_weights(w.vod_assets, w.zipf_s)
    viral = rng.randrange(w.live_streams)
    events: list[tuple[float, int, str, str, int, str, int]] = []
    # heap item: (time, seq, kind, name, segment, rung, remaining segments)
    seq = 0
    t = 0.0
    viewer = 0
    next_drift = 60.0
    while True:
        # next arrival (thinned Poisson with a day/night rate)
        rate = w.arrivals_per_s * (1 + 0.8 * math.sin(2 * math.pi * t / w.day_s))
        t += rng.expovariate(max(rate, 0.05))
        while events and events[0][0] <= t:
            ts, _, kind, name, segment, rung, left = heapq.heappop(events)
            client = f"v{_}"
            prefix = f"/{kind}/{name}"
            yield ts, client, f"{prefix}/{rung}/index.m3u8", PLAYLIST_BYTES
            yield ts, client, f"{prefix}/{rung}/{segment}.m4s", RUNGS[rung]
            yield ts, client, f"{prefix}/audio/{segment}.m4s", AUDIO_BYTES
            if left > 1:
                if rng.random() < 0.05:  # ABR switch
                    rung = _pick_rung(rng)
                gap = SEGMENT_S if kind == "live" or segment > 3 else 0.3  # VOD fast start
                heapq.heappush(events, (ts + gap, _, kind, name, segment + 1, rung, left - 1))
        if t >= w.duration_s:
            break
        if t >= next_drift:  # popularity drifts: swap two neighbouring ranks
            next_drift += 60.0
            i = rng.randrange(w.live_streams - 1)
            live_order[i], live_order[i + 1] = live_order[i + 1], live_order[i]
            j = rng.randrange(w.vod_assets - 1)
            vod_order[j], vod_order[j + 1] = vod_order[j + 1], vod_order[j]
        viewer += 1
        seq = viewer
        rung = _pick_rung(rng)
        flash = w.flash_at_s <= t < w.flash_at_s + w.flash_len_s
        if rng.random() < w.vod_share and not flash:
            asset = vod_order[rng.choices(range(w.vod_assets), weights_vod)[0]]
            watch = rng.weibullvariate(240.0, 0.6)  # seconds; many abandon early
            left = max(1, min(w.vod_segments, int(watch / SEGMENT_S)))
            heapq.heappush(events, (t, seq, "vod", f"asset{asset}", 0, rung, left))
        else:
            if flash and rng.random() < 1 - 1 / w.flash_boost:
                stream = viral
            else:
                stream = live_order[rng.choices(range(w.live_streams), weights_live)[0]]
            edge = int(t / SEGMENT_S)
            watch = rng.expovariate(1 / 600.0)
            left = max(1, int(watch / SEGMENT_S))
            heapq.heappush(
                events, (t, seq, "live", f"stream{stream}", max(0, edge - 1), rung, left)
            )
    while events:  # sessions still running at the end are cut off: drop them
        heapq.heappop(events)


def write_trace(w: Workload, path: Path) -> int:
    count = 0
    with path.open("w") as f:
        f.write("ts,client,path,bytes\n")
        for ts, client, p, size in generate(w):
            f.write(f"{ts:.3f},{client},{p},{size}\n")
            count += 1
    return count
