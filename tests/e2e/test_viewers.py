"""Viewer counts end to end: viewers polling the live playlists through an edge and
straight from the origin; the edge reports, GET /api/streams/NAME says how many."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig, TranscodeConfig
from origin.demo import DemoSettings
from origin.service import OriginService
from tests.conftest import free_port
from tests.e2e.test_ladder import wait_for_url

pytestmark = pytest.mark.e2e


async def poll(base: str, agent: str, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"User-Agent": agent}) as client:
        while not stop.is_set():
            r = await client.get("/live/demo/240p/index.m3u8")
            assert r.status_code == 200
            await asyncio.sleep(1)


async def test_viewers_on_edges_and_origin_are_counted(tmp_path: Path) -> None:
    origin = OriginService(
        OriginConfig(
            data_dir=tmp_path / "o",
            http_port=0,
            rtmp_port=0,
            demo=True,
            transcode=TranscodeConfig(ladder=((240, 300),), encoder="x264"),
        ),
        demo_settings=DemoSettings(width=426, height=240, fps=15, video_kbps=300),
    )
    await origin.start()
    edge = EdgeService(EdgeConfig(origin=origin.url, port=free_port(), cache_dir=tmp_path / "e"))
    await edge.start()
    stop = asyncio.Event()
    try:
        # Waits as one of the viewers: every session within 30 s counts.
        async with httpx.AsyncClient(headers={"User-Agent": "viewer-0"}) as client:
            await wait_for_url(f"{edge.url}/live/demo/240p/index.m3u8", 60, client=client)
        viewers = [
            *(asyncio.create_task(poll(edge.url, f"viewer-{i}", stop)) for i in range(3)),
            asyncio.create_task(poll(origin.url, "direct", stop)),
        ]
        async with httpx.AsyncClient(base_url=origin.url) as api:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                body = (await api.get("/api/streams/demo")).json()
                if body["viewers"] == 4 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert body["viewers"] == 4, body
            assert body["peak_viewers"] == 4
            listed = (await api.get("/api/streams")).json()["streams"]
            assert listed[0]["viewers"] == 4

            # Reports are bounded and checked before they count.
            r = await api.post("/api/viewers", content=b"x" * (600 * 1024))
            assert r.status_code == 413
            r = await api.post("/api/viewers", json={"edge": "e", "streams": {"demo": -5}})
            assert r.status_code == 400 and "integers" in r.json()["error"]
            await asyncio.sleep(2)
            body = (await api.get("/api/streams/demo")).json()
            assert body["viewers"] == 4 and body["watch_seconds"] > 0
        stop.set()
        await asyncio.gather(*viewers)
    finally:
        stop.set()
        await edge.close()
        await origin.close()
