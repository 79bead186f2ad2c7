"""Glass-to-glass latency of WHIP ingest: a frame's capture -> the HLS segment holding it
is listed in the media playlist *and* downloadable, at the origin and through an edge.

One process runs an origin, an edge and an aiortc publisher (VP8 or H.264 + Opus, paced
to real time, 640x360 so the ladder is one 360p rung + audio). Segment k of the stream
covers capture times [T0 + k*D, T0 + (k+1)*D) where T0 is the capture of the first frame
(the pipeline's timeline starts at the first video frame it receives). For each segment
we report the latency of its *oldest* frame (what a viewer joining at the live edge waits
for the first picture of that segment; includes the segment duration D) and of its
*newest* frame (the pure pipeline + packaging + delivery delay).

Run from the repository root: ``.venv/bin/python -m bench.whip_latency [--seconds 30]``.
Prints a JSON summary; ``--results`` appends a section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig
from origin.service import OriginService
from tests.conftest import free_port
from tests.whip_client import PatternTrack, publish

RESULTS = Path(__file__).with_name("RESULTS.md")
NAME = "latency"
POLL = 0.02


async def watch(base: str, rendition: str, seen: dict[str, float], stop: asyncio.Event) -> None:
    """Record when each segment of ``rendition`` is first listed and downloadable."""
    url = f"{base}/live/{NAME}/{rendition}/index.m3u8"
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            try:
                playlist = await client.get(url)
            except httpx.HTTPError:
                playlist = None
            if playlist is not None and playlist.status_code == 200:
                for uri in re.findall(r"^(\d+\.m4s)$", playlist.text, re.M):
                    if uri in seen:
                        continue
                    segment = await client.get(f"{base}/live/{NAME}/{rendition}/{uri}")
                    if segment.status_code == 200:
                        seen[uri] = time.monotonic()
            await asyncio.sleep(POLL)


def latencies(seen: dict[str, float], t0: float, duration: float) -> dict[str, Any]:
    ordered = sorted(seen.items(), key=lambda kv: int(kv[0].split(".")[0]))
    if not ordered:
        return {"segments": 0}
    first = int(ordered[0][0].split(".")[0])
    oldest, newest = [], []
    for uri, at in ordered:
        k = int(uri.split(".")[0]) - first
        oldest.append(at - (t0 + k * duration))
        newest.append(at - (t0 + (k + 1) * duration))
    # The last segment is cut short by the end of the stream: leave it out.
    oldest, newest = oldest[:-1], newest[:-1]
    return {
        "segments": len(oldest),
        "oldest_frame_median_s": round(statistics.median(oldest), 3),
        "newest_frame_median_s": round(statistics.median(newest), 3),
        "oldest_frame_max_s": round(max(oldest), 3),
        "newest_frame_min_s": round(min(newest), 3),
    }


async def run(seconds: float, codec: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        origin = OriginService(OriginConfig(data_dir=Path(tmp), http_port=0, rtmp_port=0))
        await origin.start()
        edge = EdgeService(
            EdgeConfig(origin=origin.url, port=free_port(), cache_dir=Path(tmp) / "edge")
        )
        await edge.start()
        key = origin.keys.create(NAME)
        stop = asyncio.Event()
        at_origin: dict[str, float] = {}
        at_edge: dict[str, float] = {}
        watchers = [
            asyncio.create_task(watch(origin.url, "360p", at_origin, stop)),
            asyncio.create_task(watch(edge.url, "360p", at_edge, stop)),
        ]
        track = PatternTrack(width=640, height=360, fps=30)
        posted = time.monotonic()
        client = await publish(f"{origin.url}/whip/{NAME}", key, codec, video=track)
        answered = time.monotonic()
        await track.started.wait()
        t0 = track.capture_start
        await asyncio.sleep(seconds)
        async with httpx.AsyncClient() as http:
            await http.delete(f"{origin.url}{client.location}")
        await client.pc.close()
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*watchers)
        duration = origin.config.transcode.segment_duration
        first_at_edge = min(at_edge.values()) - posted if at_edge else None
        result = {
            "codec": codec,
            "seconds": seconds,
            "segment_duration": duration,
            "whip_post_to_answer_s": round(answered - posted, 3),
            "post_to_first_capture_s": round(t0 - posted, 3),
            "post_to_first_segment_at_edge_s": round(first_at_edge, 3) if first_at_edge else None,
            "origin": latencies(at_origin, t0, duration),
            "edge": latencies(at_edge, t0, duration),
            "cpus": os.cpu_count(),
        }
        await edge.close()
        await origin.close()
        return result


def row(codec: str, where: str, r: dict[str, Any]) -> str:
    oldest, newest = r.get("oldest_frame_median_s"), r.get("newest_frame_median_s")
    return f"| {codec} | {where} | {r['segments']} | {oldest} s | {newest} s |"


def append_results(results: list[dict[str, Any]]) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    first = results[0]
    rows = "\n".join(
        row(r["codec"], where, r[where]) for r in results for where in ("origin", "edge")
    )
    setup = "; ".join(
        f"{r['codec']}: POST -> 201 {r['whip_post_to_answer_s']} s, POST -> first segment at "
        f"the edge {r['post_to_first_segment_at_edge_s']} s"
        for r in results
    )
    section = f"""
## WHIP glass-to-glass (`python -m bench.whip_latency`)

- date: `{stamp}`; aiortc publisher 640x360@30 + Opus, {first["seconds"]:g} s per codec, \
segments {first["segment_duration"]:g} s, ladder 360p + AAC, libx264, {first["cpus"]} CPUs \
shared with other work; origin, edge and publisher in one process on loopback
- capture of a frame -> the segment holding it listed in the media playlist and downloaded

| codec | where | segments | oldest frame (median) | newest frame (median) |
|---|---|---|---|---|
{rows}

{setup}. The oldest frame of a segment waits the whole segment duration by construction; the \
newest-frame figure is the pipeline's own delay (jitter buffer, decode, x264 zerolatency, \
fMP4 cut, playlist write) plus, at the edge, its manifest cache (`max-age=1`).
"""
    with RESULTS.open("a") as f:
        f.write(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--codec", choices=["VP8", "H264"], action="append", help="default: VP8 and H264"
    )
    parser.add_argument("--results", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = [asyncio.run(run(args.seconds, codec)) for codec in args.codec or ["VP8", "H264"]]
    print(json.dumps(results, indent=2))
    if args.results:
        append_results(results)


if __name__ == "__main__":
    main()
