"""Publishing from a real browser: Debian's headless Chromium with a fake camera and
microphone runs /player/publish.html, which POSTs its WebRTC offer to our WHIP endpoint;
the stream's HLS then decodes with libavformat."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Page, async_playwright

from meshcast.keys import KeyStore
from origin.service import OriginService
from tests.browser.chromium import ARTIFACTS, launch
from tests.conftest import wait_for_state
from tests.e2e.test_whip import check_ended_hls

pytestmark = pytest.mark.e2e


async def publish_state(page: Page) -> dict[str, object]:
    state: dict[str, object] = await page.evaluate("window.meshcastPublish")
    return state


async def test_publish_page_goes_live_from_the_fake_camera(
    origin: OriginService, keys: KeyStore
) -> None:
    key = keys.create("browsercam")
    async with async_playwright() as pw:
        browser = await launch(
            pw, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"
        )
        try:
            page = await browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            await page.goto(
                f"{origin.url}/player/publish.html?stream=browsercam&key={key}&autostart=1"
            )
            deadline = asyncio.get_running_loop().time() + 30
            state = await publish_state(page)
            while state["state"] != "live":
                assert state["state"] in ("idle", "connecting"), state
                assert asyncio.get_running_loop().time() < deadline, state
                await asyncio.sleep(0.2)
                state = await publish_state(page)
            assert state["codec"] in ("VP8", "H264"), state
            live = await wait_for_state(origin, "browsercam", "live")
            assert live["protocol"] == "whip"
            # ~5 s of media through the ladder before stopping
            for _ in range(150):
                live = await wait_for_state(origin, "browsercam", "live")
                if live["video"] and live["video"]["duration"] >= 5.0:
                    break
                await asyncio.sleep(0.1)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "publish-page.png"))
            await page.click("#stop")
            ended = await wait_for_state(origin, "browsercam", "ended", within=10)
            assert (await publish_state(page))["state"] == "ended"
            assert page_errors == []
        finally:
            await browser.close()
    assert ended["end_reason"] == "publisher sent DELETE"
    video = ended["video"]
    assert video["codec"] == str(state["codec"]).lower()
    # Chromium's fake camera is 640x480 (it may adapt the resolution down under load)
    assert video["width"] and video["height"] and video["frames"] >= 60, video
    assert ended["audio"]["codec"] == "opus" and ended["audio"]["frames"] > 100
    decoded = await check_ended_hls(origin, "browsercam")
    rungs = [r for r in decoded if r != "audio"]
    assert rungs, decoded
    rung = decoded[rungs[0]]["video"]
    assert rung["codec"] == "h264" and rung["frames"] >= 60, decoded
    assert decoded["audio"]["audio"]["codec"] == "aac" and decoded["audio"]["audio"]["frames"] > 0
