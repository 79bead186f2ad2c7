"""Live prefetch on real edges: client hit ratio and upstream bytes with and without the
prefetcher, side by side in one run.

One origin publishes the built-in demo stream (854x480 -> 480p + 360p); two edges pull from
it, one plain, one with ``prefetch_budget``. Each edge gets the same viewers: HTTP clients
that behave like an HLS player at the live edge (poll the media playlist, fetch each new
segment once), joining a few seconds apart, some on 480p, some on 360p. From the repository
root: ``.venv/bin/python -m bench.prefetch [--seconds 60] [--viewers 6] [--no-write]``.
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

from bench.results import write_block
from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig, TranscodeConfig
from origin.demo import DemoSettings
from origin.service import OriginService


async def player(
    base: str, rendition: str, seconds: float, labels: Counter[str], sizes: Counter[str]
) -> None:
    seen: set[int] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with httpx.AsyncClient(timeout=10) as client:
        while loop.time() < deadline:
            response = await client.get(f"{base}/live/demo/{rendition}/index.m3u8")
            numbers = [int(n) for n in re.findall(r"^(\d+)\.m4s$", response.text, re.M)]
            if not seen and numbers:
                seen.update(numbers[:-2])  # hls.js starts ~3 segments behind the edge
            for number in numbers:
                if number not in seen:
                    seen.add(number)
                    r = await client.get(f"{base}/live/demo/{rendition}/{number}.m4s")
                    labels[r.headers.get("x-cache", "?")] += 1
                    sizes[r.headers.get("x-cache", "?")] += len(r.content)
            await asyncio.sleep(0.5)


def metric(text: str, name: str) -> float:
    return sum(
        float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


async def run(seconds: float, viewers: int, tmp: Path) -> dict[str, dict[str, float]]:
    origin = OriginService(
        OriginConfig(
            data_dir=tmp / "origin", http_port=0, rtmp_port=0, demo=True,
            transcode=TranscodeConfig(ladder=((480, 1400), (360, 800))),
        ),
        demo_settings=DemoSettings(width=854, height=480, fps=25),
    )  # fmt: skip
    await origin.start()
    edges = {
        name: EdgeService(
            EdgeConfig(origin=origin.url, port=0, cache_dir=tmp / name, prefetch_budget=budget)
        )
        for name, budget in (("plain", 0), ("prefetch", 32 * 1024 * 1024))
    }
    for edge in edges.values():
        await edge.start()
    results: dict[str, dict[str, float]] = {}
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(120):
                if (await client.get(f"{origin.url}/live/demo/360p/index.m3u8")).status_code == 200:
                    break
                await asyncio.sleep(0.5)
        labels = {name: Counter[str]() for name in edges}
        sizes = {name: Counter[str]() for name in edges}
        tasks = []
        for i in range(viewers):
            rendition = "480p" if i % 2 else "360p"
            for name, edge in edges.items():
                tasks.append(
                    asyncio.create_task(
                        player(edge.url, rendition, seconds - 3 * i, labels[name], sizes[name])
                    )
                )
            await asyncio.sleep(3)  # viewers join a few seconds apart
        await asyncio.gather(*tasks)
        async with httpx.AsyncClient() as client:
            for name, edge in edges.items():
                text = (await client.get(f"{edge.url}/metrics")).text
                total = sum(labels[name].values())
                results[name] = {
                    "segment_requests": total,
                    "hit_ratio": labels[name]["HIT"] / total if total else 0.0,
                    "byte_hit_ratio": sizes[name]["HIT"] / sum(sizes[name].values()),
                    "miss": labels[name]["MISS"],
                    "coalesced": labels[name]["COALESCED"],
                    "upstream_bytes": metric(text, "meshcast_edge_upstream_bytes_total"),
                    "prefetch_wasted_bytes": metric(
                        text, "meshcast_edge_prefetch_wasted_bytes_total"
                    ),
                }
    finally:
        for edge in edges.values():
            await edge.close()
        await origin.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--viewers", type=int, default=6)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(run(args.seconds, args.viewers, Path(tmp)))
    plain, pre = results["plain"], results["prefetch"]
    lines = [
        f"- date: `{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC`; demo stream "
        f"480p+360p, 2 s segments, {args.viewers} live viewers per edge joining 3 s apart, "
        f"{args.seconds:.0f} s",
        "",
        "| edge | segment requests | client hit ratio | byte hit ratio | MISS | COALESCED "
        "| upstream bytes | prefetched, unused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['segment_requests']:.0f} | {r['hit_ratio']:.3f} | "
            f"{r['byte_hit_ratio']:.3f} | {r['miss']:.0f} | {r['coalesced']:.0f} | "
            f"{r['upstream_bytes']:.0f} | {r['prefetch_wasted_bytes']:.0f} |"
        )
    extra = pre["upstream_bytes"] / plain["upstream_bytes"] - 1 if plain["upstream_bytes"] else 0
    lines.append("")
    lines.append(
        f"Prefetch: client hit ratio {plain['hit_ratio']:.3f} -> {pre['hit_ratio']:.3f}, "
        f"upstream bytes {extra:+.1%}."
    )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_block("prefetch", "## Edge prefetch, live (`bench/prefetch.py`)", text)


if __name__ == "__main__":
    main()
