"""Origin egress vs number of edges and viewers (issue 14's "O(edges), not O(viewers)").

One origin publishes the demo stream (480p + 360p); for each (edges, viewers) pair a fresh
ring of edges (peers of each other, cold caches) serves live viewers (the HLS player loop of
``bench/prefetch.py``) spread evenly over the edges for a fixed time. Origin egress = bytes
the edges fetched from the origin (``meshcast_edge_upstream_bytes_total{source="origin"}``);
viewer bytes = what the players downloaded. From the repository root:
``.venv/bin/python -m bench.scale [--seconds 20] [--no-write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from bench.edge import free_port
from bench.prefetch import player
from bench.results import write_block
from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig, TranscodeConfig
from origin.demo import DemoSettings
from origin.service import OriginService

GRID = [(1, 4), (1, 16), (1, 48), (2, 16), (2, 48), (4, 16), (4, 48)]


def origin_bytes(text: str) -> float:
    match = re.search(r'^meshcast_edge_upstream_bytes_total\{source="origin"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def one(
    origin: str, tmp: Path, edges_n: int, viewers: int, seconds: float
) -> dict[str, float]:
    ports = [free_port() for _ in range(edges_n)]
    edges = [
        EdgeService(
            EdgeConfig(
                origin=origin, port=port, cache_dir=tmp / f"e{edges_n}-{viewers}-{port}",
                peers=tuple(f"http://127.0.0.1:{p}" for p in ports if p != port),
            )
        )
        for port in ports
    ]  # fmt: skip
    for edge in edges:
        await edge.start()
    labels: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    try:
        tasks = [
            player(edges[i % edges_n].url, "480p" if i % 2 else "360p", seconds, labels, sizes)
            for i in range(viewers)
        ]
        await asyncio.gather(*tasks)
        async with httpx.AsyncClient() as client:
            texts = [(await client.get(f"{e.url}/metrics")).text for e in edges]
    finally:
        for edge in edges:
            await edge.close()
    return {
        "origin_bytes": sum(origin_bytes(t) for t in texts),
        "viewer_bytes": float(sum(sizes.values())),
        "segments": float(sum(labels.values())),
    }


async def run(seconds: float, tmp: Path) -> list[tuple[int, int, dict[str, float]]]:
    origin = OriginService(
        OriginConfig(
            data_dir=tmp / "origin", http_port=free_port(), rtmp_port=0, demo=True,
            transcode=TranscodeConfig(ladder=((480, 1400), (360, 800))),
        ),
        demo_settings=DemoSettings(width=854, height=480, fps=25),
    )  # fmt: skip
    await origin.start()
    rows = []
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(120):
                if (await client.get(f"{origin.url}/live/demo/360p/index.m3u8")).status_code == 200:
                    break
                await asyncio.sleep(0.5)
        await asyncio.sleep(6)  # a full window of segments
        for edges_n, viewers in GRID:
            rows.append((edges_n, viewers, await one(origin.url, tmp, edges_n, viewers, seconds)))
            print(edges_n, viewers, rows[-1][2], flush=True)
    finally:
        await origin.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(run(args.seconds, Path(tmp)))
    lines = [
        f"- date: `{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC`; demo stream "
        f"480p+360p (2 s segments), live viewers for {args.seconds:.0f} s per row, half on each "
        "rung, spread evenly over a ring of edges (cold caches each row)",
        "",
        "| edges | viewers | viewer MB | origin egress MB | origin / viewer bytes |",
        "|---|---|---|---|---|",
    ]
    for edges_n, viewers, r in rows:
        ratio = r["origin_bytes"] / r["viewer_bytes"] if r["viewer_bytes"] else 0.0
        lines.append(
            f"| {edges_n} | {viewers} | {r['viewer_bytes'] / 1e6:.1f} | "
            f"{r['origin_bytes'] / 1e6:.2f} | {ratio:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_block(
            "scale", "## Scale-out: origin egress vs edges and viewers (`bench/scale.py`)", text
        )


if __name__ == "__main__":
    main()
