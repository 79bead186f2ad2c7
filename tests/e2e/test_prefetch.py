"""The edge prefetcher and the ml cache policy on a real edge, fed by an ffmpeg RTMP push
and read by an HTTP client that behaves like an HLS player."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.app import Edge
from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url
from tests.e2e.test_edge import metric
from tests.e2e.test_ladder import wait_for_url
from tests.e2e.test_rtmp_ingest import ffmpeg_push

pytestmark = pytest.mark.e2e


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[OriginService]:
    service = OriginService(
        OriginConfig(data_dir=tmp_path / "origin", http_port=free_port(), rtmp_port=0)
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def edge_config(origin: OriginService, tmp_path: Path, **kwargs: Any) -> EdgeConfig:
    return EdgeConfig(origin=origin.url, port=free_port(), cache_dir=tmp_path / "edge", **kwargs)


async def play_live(
    client: httpx.AsyncClient, base: str, name: str, seconds: float
) -> list[tuple[int, str]]:
    """Poll the 360p playlist like hls.js does and fetch each new segment once; returns
    (segment number, X-Cache) in request order."""
    seen: set[int] = set()
    results: list[tuple[int, str]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        response = await client.get(f"{base}/live/{name}/360p/index.m3u8")
        if response.status_code == 200:
            numbers = [int(n) for n in re.findall(r"^(\d+)\.m4s$", response.text, re.M)]
            if not seen and numbers:
                seen.update(numbers[:-1])  # join at the live edge, as players do
            for number in numbers:
                if number not in seen:
                    seen.add(number)
                    segment = await client.get(f"{base}/live/{name}/360p/{number}.m4s")
                    assert segment.status_code == 200
                    results.append((number, segment.headers["x-cache"]))
            if "#EXT-X-ENDLIST" in response.text:
                break
        await asyncio.sleep(0.4)
    return results


async def test_prefetched_live_segments_are_hits(
    origin: OriginService, tmp_path: Path, ffmpeg_cli: str
) -> None:
    edge = EdgeService(edge_config(origin, tmp_path, prefetch_budget=64 * 1024 * 1024))
    await edge.start()
    try:
        key = origin.keys.create("pre")
        proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 14.0)
        await wait_for_url(f"{origin.url}/live/pre/360p/index.m3u8", 30)
        async with httpx.AsyncClient(timeout=10) as client:
            results = await play_live(client, edge.url, "pre", 20)
            text = (await client.get(f"{edge.url}/metrics")).text
        await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await edge.close()
    labels = Counter(label for _, label in results[1:])
    assert len(results) >= 4, results
    # Behind the first segment the prefetcher was always first: no viewer-caused MISS.
    assert labels["MISS"] == 0, results
    assert labels["HIT"] >= 2, results
    hits = metric(text, "meshcast_edge_prefetch_hits_total")
    assert hits >= labels["HIT"]
    assert metric(text, "meshcast_edge_prefetch_bytes_total") > 0
    assert metric(text, 'meshcast_edge_requests_total{cache="HIT"}') >= labels["HIT"]


async def test_ml_policy_refits_in_a_worker_and_reloads_its_model(
    origin: OriginService, tmp_path: Path, ffmpeg_cli: str
) -> None:
    config = edge_config(origin, tmp_path, cache_policy="ml", ml_retrain_every=40)
    edge = EdgeService(config)
    demand = edge.edge.demand
    assert demand is not None
    demand.min_samples, demand.sample_every, demand.horizon_s = 20, 1, 1.0
    await edge.start()
    try:
        key = origin.keys.create("ml")
        proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 10.0)
        await wait_for_url(f"{origin.url}/live/ml/360p/index.m3u8", 30)
        async with httpx.AsyncClient(timeout=10) as client:
            viewers = [play_live(client, edge.url, "ml", 16) for _ in range(3)]
            await asyncio.gather(*viewers)
            for _ in range(600):  # the fit runs in a spawned worker process: wait for it
                text = (await client.get(f"{edge.url}/metrics")).text
                if metric(text, "meshcast_edge_model_version") >= 1:
                    break
                await asyncio.sleep(0.1)
        await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await edge.close()
    assert metric(text, "meshcast_edge_model_version") >= 1, text
    assert metric(text, 'meshcast_edge_model_refits_total{outcome="ok"}') >= 1
    assert demand.model is not None and demand.model.samples >= 20
    files = sorted((tmp_path / "edge" / "models").glob("model-v*.json"))
    assert files and files[-1].name == f"model-v{demand.model.version:06d}.json"
    # A restarted edge starts with the saved model instead of plain S3-FIFO.
    restarted = Edge(config)
    try:
        assert restarted.demand is not None and restarted.demand.model == demand.model
    finally:
        await restarted.close()
