"""The player's contributor-network beacons in a real browser (Playwright + Debian's
headless Chromium): played through an edge that joined the origin's network, the page
reports the media bytes it got from that edge to the coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path

from playwright.async_api import async_playwright

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig
from meshcast.signing import NodeKey
from origin.demo import DemoSettings
from origin.service import OriginService
from tests.browser.chromium import launch
from tests.browser.test_player import wait_playing
from tests.conftest import free_port
from tests.e2e.test_ladder import wait_for_url


async def test_player_beacons_the_bytes_its_edge_served(tmp_path: Path) -> None:
    origin = OriginService(
        OriginConfig(data_dir=tmp_path / "o", http_port=0, rtmp_port=0, demo=True),
        demo_settings=DemoSettings(width=640, height=360, fps=25, video_kbps=800),
    )
    await origin.start()
    key = NodeKey.create(tmp_path / "node" / "node.key")
    edge = EdgeService(
        EdgeConfig(
            origin=origin.url,
            port=free_port(),
            cache_dir=tmp_path / "e",
            join=origin.url,
            node_dir=tmp_path / "node",
        )
    )
    await edge.start()
    assert origin.coordinator is not None
    db = origin.coordinator
    try:
        await wait_for_url(f"{edge.url}/live/demo/master.m3u8", 60)
        async with async_playwright() as pw:
            browser = await launch(pw)
            try:
                page = await browser.new_page()
                await page.goto(f"{edge.url}/player/?stream=demo")
                await wait_playing(page, 4.0, 40)
                assert await page.evaluate("window.meshcastBeacons.sampled") is True
                before = edge.edge.meter.usage.served.get("live/demo", 0)
                reported = await page.evaluate("window.meshcastBeacons.flush()")
                after = edge.edge.meter.usage.served.get("live/demo", 0)
            finally:
                await browser.close()
        # What the page reports is what the edge counted for it (requests still in
        # flight at the flush are the only difference).
        assert 0.9 * before <= reported <= after, (before, reported, after)
        for _ in range(50):
            with db._lock:
                (total,) = db.db.execute(
                    "SELECT COALESCE(SUM(bytes), 0) FROM beacons WHERE node = ? AND stream = ?",
                    (key.node_id, "live/demo"),
                ).fetchone()
            if total >= reported:
                break
            await asyncio.sleep(0.1)
        assert total == reported
    finally:
        await edge.close()
        await origin.close()
