"""Inference marketplace overhead: moderation jobs through ``POST /api/inference`` (origin
coordinator -> scheduler -> signed order over HTTP -> edge fetch through its cache ->
plugin worker process -> signed result -> metering) against calling the same detector
directly in one process on the same segments.

One origin and two joined edges with the moderation plugin (one worker process each), all
on this host; ffmpeg pushes a stream whose frames hold a face. Reported: median and p95
latency of one job at a time (submission -> done, by the coordinator's clock), and
throughput with ``--jobs`` submitted at once, against the detector called in a loop.
From the repository root: ``.venv/bin/python -m bench.inference [--jobs 40] [--no-write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.results import write_block
from edge.plugins import nsfw
from edge.service import EdgeService
from meshcast.config import EdgeConfig, NetworkConfig, OriginConfig
from meshcast.keys import API_KIND
from meshcast.signing import NodeKey
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url
from tests.e2e.test_plugins import benign_then_image, push


def p95(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


async def segments(origin: OriginService, tmp: Path, ffmpeg: str) -> list[str]:
    video = await benign_then_image(tmp, ffmpeg, 1.0, 16.0)
    proc = await push(
        ffmpeg, rtmp_url(origin, origin.keys.create("bench")), 16.0, video=["-i", str(video)]
    )
    await proc.wait()
    async with httpx.AsyncClient() as client:
        for _ in range(100):
            text = (await client.get(f"{origin.url}/live/bench/360p/index.m3u8")).text
            if "#EXT-X-ENDLIST" in text:
                break
            await asyncio.sleep(0.2)
    numbers = re.findall(r"^(\d+)\.m4s$", text, re.M)
    return [f"/live/bench/360p/{n}.m4s" for n in numbers[1:]]


async def submit_and_wait(
    client: httpx.AsyncClient, api: str, auth: dict[str, str], paths: list[str]
) -> list[dict[str, Any]]:
    ids = []
    for path in paths:
        r = await client.post(
            api, headers=auth, json={"model": "moderation", "input": {"path": path}}
        )
        r.raise_for_status()
        ids.append(r.json()["id"])
    docs: dict[str, dict[str, Any]] = {}
    while len(docs) < len(ids):
        for job in ids:
            if job in docs:
                continue
            doc = (await client.get(f"{api}/{job}", headers=auth)).json()
            if doc["state"] in ("done", "failed"):
                docs[job] = doc
        await asyncio.sleep(0.1)  # gently: polling competes with the jobs for the CPUs
    return [docs[j] for j in ids]


async def marketplace(jobs: int, ffmpeg: str) -> tuple[dict[str, float], list[str], Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    origin = OriginService(
        OriginConfig(
            data_dir=tmp / "origin",
            http_port=free_port(),
            rtmp_port=0,
            network=NetworkConfig(spot_check_rate=0.0),
        )
    )
    await origin.start()
    edges = []
    for i in range(2):
        NodeKey.create(tmp / f"node-{i}" / "node.key")
        edges.append(
            EdgeService(
                EdgeConfig(
                    origin=origin.url,
                    port=free_port(),
                    cache_dir=tmp / f"edge-{i}",
                    join=origin.url,
                    node_dir=tmp / f"node-{i}",
                    heartbeat=0.5,
                    plugins=("moderation",),
                )
            )
        )
    api = f"{origin.url}/api/inference"
    auth = {"Authorization": f"Bearer {origin.keys.create('bench', API_KIND)}"}
    try:
        for edge in edges:
            await edge.start()
        paths = await segments(origin, tmp, ffmpeg)
        async with httpx.AsyncClient(timeout=30) as client:
            await submit_and_wait(client, api, auth, paths[:2])  # models loaded, caches warm
            one_by_one = []
            for path in (paths * 3)[:12]:
                (doc,) = await submit_and_wait(client, api, auth, [path])
                assert doc["state"] == "done", doc
                one_by_one.append(doc["updated"] - doc["created"])
            docs = await submit_and_wait(client, api, auth, (paths * jobs)[:jobs])
            # by the coordinator's clock: first submission to last completion
            elapsed = max(d["updated"] for d in docs) - min(d["created"] for d in docs)
        assert all(d["state"] == "done" for d in docs), [d["reason"] for d in docs]
        nodes = {d["node"] for d in docs}
        retried = sum(len(d["attempts"]) > 1 for d in docs)
    finally:
        for edge in edges:
            await edge.close()
        await origin.close()
    return (
        {
            "latency_ms": 1000 * statistics.median(one_by_one),
            "latency_p95_ms": 1000 * p95(one_by_one),
            "jobs_per_s": jobs / elapsed,
            "nodes_used": len(nodes),
            "retried": retried,
            "seconds_billed": sum(d["inference_seconds"] for d in docs),
        },
        paths,
        tmp / "origin",
    )


def direct(paths: list[str], data: Path, jobs: int) -> dict[str, float]:
    """The same detector in this process (one ONNX thread, as in the plugin's workers)."""
    nsfw.load_detector()
    inputs = []
    for path in paths:
        rendition = data / "live" / path.removeprefix("/live/").rpartition("/")[0]
        inputs.append(
            (
                (rendition / "init.mp4").read_bytes(),
                (rendition / path.rpartition("/")[2]).read_bytes(),
            )
        )
    nsfw.job(*inputs[0])
    latencies = []
    for init, segment in (inputs * jobs)[:jobs]:
        t0 = time.perf_counter()
        nsfw.job(init, segment)
        latencies.append(time.perf_counter() - t0)
    return {
        "latency_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * p95(latencies),
        "jobs_per_s": len(latencies) / sum(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--ffmpeg", default="ffmpeg")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    market, paths, data = asyncio.run(marketplace(args.jobs, args.ffmpeg))
    local = direct(paths, data, args.jobs)
    print({"marketplace": market, "direct": local})
    if args.no_write:
        return
    text = (
        f"Run {datetime.date.today()} on {os.cpu_count()} cores: moderation (nudenet 320n, "
        f"one ONNX thread per worker) on {len(paths)} 360p live segments; origin + 2 joined "
        "edges (one worker process each) on the same host; no spot checks.\n\n"
        "| path | latency median | latency p95 | throughput |\n|---|---|---|---|\n"
        f"| detector called in-process, one at a time | {local['latency_ms']:.0f} ms | "
        f"{local['latency_p95_ms']:.0f} ms | {local['jobs_per_s']:.1f} jobs/s |\n"
        f"| `POST /api/inference` -> done (one at a time; {args.jobs} at once for throughput) "
        f"| {market['latency_ms']:.0f} ms | {market['latency_p95_ms']:.0f} ms | "
        f"{market['jobs_per_s']:.1f} jobs/s |\n\n"
        f"{args.jobs} concurrent jobs ran on {market['nodes_used']} nodes, "
        f"{market['retried']} retried, {market['seconds_billed']} seconds billed (every started "
        "second counts, so short jobs bill 1 s each)."
    )
    write_block("inference", "## Inference marketplace (`bench/inference.py`)", text)


if __name__ == "__main__":
    main()
