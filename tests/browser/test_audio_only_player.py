"""An audio-only RTMP publication (ffmpeg -vn) in the player, through an edge: hls.js
plays the audio-only variant, shaka-player the MPD's audio set."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig
from origin.service import OriginService
from tests.browser.chromium import launch
from tests.browser.test_player import errors, wait_playing
from tests.clients import ffmpeg_publish, finished
from tests.conftest import free_port, rtmp_url
from tests.e2e.test_ladder import wait_for_url

pytestmark = pytest.mark.e2e


async def test_audio_only_stream_plays_in_hls_js_and_shaka(tmp_path: Path) -> None:
    origin = OriginService(OriginConfig(data_dir=tmp_path / "o", http_port=0, rtmp_port=0))
    await origin.start()
    edge = EdgeService(EdgeConfig(origin=origin.url, port=free_port(), cache_dir=tmp_path / "e"))
    await edge.start()
    key = origin.keys.create("radio")
    publisher = await ffmpeg_publish(rtmp_url(origin, key), 40.0, video=False, sample_rate=48000)
    try:
        await wait_for_url(f"{edge.url}/live/radio/master.m3u8", 30)
        async with async_playwright() as pw:
            browser = await launch(pw)
            try:
                for query, player in (("", "hls.js"), ("&format=dash", "shaka-player")):
                    page = await browser.new_page()
                    await page.goto(f"{edge.url}/player/?stream=radio{query}")
                    await wait_playing(page, 3.0, 30)
                    assert await errors(page) == [], player
                    assert player in (await page.text_content("#stats") or "")
                    await page.close()
            finally:
                await browser.close()
    finally:
        publisher.kill()
        await finished(publisher)
        await edge.close()
        await origin.close()
