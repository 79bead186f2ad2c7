"""The creator studio in Debian's headless Chromium (Playwright): sign-in errors, a new
stream key, a publish with the ffmpeg CLI going live with as many viewers as playing
pages, a tus upload interrupted and resumed, a price, an embed code copied into a host
page that plays it, the network page; then the ended stream's recording seeks in hls.js.
Screenshots of every page go to test-artifacts/."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright
from playwright.async_api import Error as PlaywrightError

from edge.service import EdgeService
from meshcast.config import EdgeConfig, NetworkConfig, OriginConfig, TranscodeConfig
from meshcast.keys import API_KIND
from meshcast.rewards import RewardParams
from meshcast.signing import NodeKey
from origin.service import OriginService
from tests.browser.chromium import ARTIFACTS, launch
from tests.browser.test_player import host_page
from tests.conftest import free_port
from tests.e2e.test_rtmp_ingest import ffmpeg_push

pytestmark = pytest.mark.e2e

VIEWERS = 2
DAY = 86400.0


@dataclass
class Studio:
    origin: OriginService
    edge: EdgeService
    browser: Browser
    api_key: str
    revoked_key: str


@pytest.fixture
async def studio(tmp_path: Path) -> AsyncIterator[Studio]:
    origin = OriginService(
        OriginConfig(
            data_dir=tmp_path / "o",
            http_port=free_port(),
            rtmp_port=0,
            transcode=TranscodeConfig(ladder=((360, 600), (240, 300)), encoder="x264"),
            # One long epoch; the test moves the coordinator's clock to close it.
            network=NetworkConfig(rewards=RewardParams(epoch_seconds=DAY), close_grace=5),
        )
    )
    await origin.start()
    # A contributor node: the network page has a node, receipts and a closed epoch to show.
    NodeKey.create(tmp_path / "e" / "node.key")
    edge = EdgeService(
        EdgeConfig(
            origin=origin.url,
            port=free_port(),
            cache_dir=tmp_path / "e",
            join=origin.url,
            receipt_interval=1.0,
        )
    )
    await edge.start()
    api_key = origin.keys.create("alice", API_KIND)
    revoked = origin.keys.create("mallory", API_KIND)
    origin.keys.revoke("mallory", API_KIND)
    async with async_playwright() as pw:
        browser = await launch(pw)
        try:
            yield Studio(origin, edge, browser, api_key, revoked)
        finally:
            await browser.close()
            await edge.close()
            await origin.close()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # Chromium under load sometimes answers "Unable to capture screenshot" before its next
    # frame: try again (the artifact is wanted, a flake is not).
    for attempt in range(3):
        try:
            await page.screenshot(path=str(ARTIFACTS / f"studio-{name}.png"), full_page=True)
            return
        except PlaywrightError:
            if attempt == 2:
                raise
            await asyncio.sleep(1)


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 60.0) -> None:
    """Poll an async predicate (generous deadline: the machine is shared)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def video_time(page: Page) -> float:
    return float(await page.evaluate("document.getElementById('video').currentTime"))


async def sign_in(page: Page, key: str) -> None:
    await page.fill("#api-key", key)
    await page.click("#signin-button")


async def make_upload(path: Path) -> None:
    # ~10 MB: two tus chunks of 5 MiB and a bit, so a resume has something to skip.
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
        "testsrc2=size=640x360:rate=25,noise=alls=30:allf=t",
        "-f", "lavfi", "-i", "sine", "-t", "4", "-c:v", "libx264", "-preset", "ultrafast",
        "-b:v", "20M", "-maxrate", "20M", "-bufsize", "4M", "-c:a", "aac", "-shortest",
        str(path),
    )  # fmt: skip
    assert await proc.wait() == 0


async def test_studio_end_to_end(studio: Studio, ffmpeg_cli: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=studio.origin.url, timeout=30) as api:
        origin, edge = studio.origin, studio.edge
        context = await studio.browser.new_context(viewport={"width": 1200, "height": 900})
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin.url)
        page = await context.new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))

        # Served by the edge too; it hands over to the origin, where the key is used.
        response = await page.goto(f"{edge.url}/studio/")
        assert response is not None and response.status == 200
        await page.wait_for_url(f"{origin.url}/studio/**")
        await page.wait_for_selector("body[data-ready='1']")
        await shot(page, "signin")

        # ---- sign-in errors ---------------------------------------------------------------
        await sign_in(page, "api_0000_wrong")
        await page.wait_for_selector("#signin-error:has-text('Sign-in refused')")
        assert "unknown api key" in (await page.text_content("#signin-error") or "")
        await sign_in(page, studio.revoked_key)
        await page.wait_for_selector("#signin-error:has-text('revoked')")
        await shot(page, "signin-error")
        await sign_in(page, studio.api_key)
        await page.wait_for_selector("#page-streams:not([hidden])")
        assert await page.text_content("#owner") == "alice"

        # ---- a stream key, a publish, viewers -------------------------------------------
        await page.fill("#new-key-name", "show")
        await page.click("#create-key")
        stream_key = (await page.text_content("#new-key-value", timeout=10_000) or "").strip()
        assert origin.keys.verify(stream_key) == "show" and origin.keys.owner_of("show") == "alice"
        await page.fill("#new-key-name", "show")
        await page.click("#create-key")
        await page.wait_for_selector("#keys-error:has-text('taken')")

        publisher = await ffmpeg_push(
            ffmpeg_cli, f"rtmp://127.0.0.1:{origin.rtmp.port}/live/{stream_key}", 600
        )
        row = page.locator("[data-stream='show']")
        await row.locator("[data-field='state']:has-text('live')").wait_for(timeout=60_000)

        viewer_contexts: list[BrowserContext] = []
        viewers: list[Page] = []
        for i in range(VIEWERS):
            # Separate browsers as far as the edge can tell: their own user agent.
            ctx = await studio.browser.new_context(user_agent=f"viewer-{i}")
            viewer_contexts.append(ctx)
            viewer = await ctx.new_page()
            # One hls.js viewer and one shaka (DASH) viewer.
            await viewer.goto(f"{edge.url}/player/?stream=show{'&format=dash' if i else ''}")
            viewers.append(viewer)

        async def all_playing() -> bool:
            return all([await video_time(v) > 1.0 for v in viewers])

        await until(all_playing, "viewer pages playing", 90)

        async def studio_counts_them() -> bool:
            text = await row.locator("[data-field='viewers']").text_content()
            return text == str(VIEWERS)

        await until(studio_counts_them, f"the studio showing {VIEWERS} viewers", 60)
        assert (await api.get("/api/streams/show")).json()["viewers"] == VIEWERS
        await row.locator("[data-field='health']:has-text('healthy')").wait_for(timeout=20_000)
        await row.locator("input.clip-seconds").fill("6")
        await row.locator("button.clip").click()
        await row.locator(".clip-state:has-text('in the library')").wait_for(timeout=30_000)
        clip_id = (await row.locator(".clip-state").text_content() or "").split()[1]
        clip = (await api.get(f"/api/vod/{clip_id}")).json()
        assert clip["source"] == "clip" and abs(clip["duration"] - 6) <= 2, clip

        # DVR: a recorded stream keeps its whole past in the live playlists/MPD (an
        # unrecorded one only 12 s): both players can seek back to its start.
        async def dvr_span(viewer: Page) -> float:
            span = await viewer.evaluate(
                "(() => { const s = document.getElementById('video').seekable;"
                " return s.length ? s.end(s.length - 1) - s.start(0) : 0; })()"
            )
            return float(span)

        async def long_window() -> bool:
            return all([await dvr_span(v) > 16 for v in viewers])

        await until(long_window, "a DVR window longer than an unrecorded stream's", 60)
        for viewer in viewers:
            start = await viewer.evaluate("document.getElementById('video').seekable.start(0)")
            await viewer.evaluate(f"document.getElementById('video').currentTime = {start + 1}")

            async def plays_back_there(viewer: Page = viewer, start: float = start) -> bool:
                t = await video_time(viewer)
                return start + 2 < t < start + 12

            await until(plays_back_there, "playback from the start of the DVR window", 30)
        await row.locator("details summary").click()
        await row.locator("svg[data-series='kbps']").wait_for(timeout=20_000)
        await shot(page, "streams")
        landing = await context.new_page()
        await landing.goto(f"{edge.url}/")
        tile = landing.locator("a[href='/player/?stream=show']")
        await tile.wait_for()
        width = await tile.locator("img").evaluate(
            "img => img.complete ? img.naturalWidth"
            " : new Promise(r => { img.onload = () => r(img.naturalWidth); })"
        )
        assert width == 320
        assert f"{VIEWERS} watching" in (await landing.text_content("main") or "")
        await shot(landing, "landing")
        for ctx in viewer_contexts:
            await ctx.close()

        # ---- tus upload, interrupted and resumed ----------------------------------------
        upload_file = tmp_path / "holiday.mp4"
        await make_upload(upload_file)
        size = upload_file.stat().st_size
        assert size > 6 * 1024 * 1024
        patches: list[str] = []
        heads: list[str] = []
        cut = {"done": False}

        async def interrupt_second_patch(route: Route) -> None:
            request = route.request
            if request.method == "PATCH":
                patches.append(request.headers.get("upload-offset", ""))
                if len(patches) == 2 and not cut["done"]:
                    cut["done"] = True
                    await route.abort("connectionreset")
                    return
            elif request.method == "HEAD":
                heads.append(request.url)
            await route.continue_()

        await page.route("**/api/vod/*/upload", interrupt_second_patch)
        await page.goto(f"{origin.url}/studio/#uploads")
        await page.wait_for_selector("#page-uploads:not([hidden])")
        await page.set_input_files("#file-input", str(upload_file))
        upload_row = page.locator(".upload[data-file='holiday.mp4']")
        await upload_row.locator(".upload-state:has-text('ready')").wait_for(timeout=180_000)
        await shot(page, "uploads")
        await page.unroute("**/api/vod/*/upload")
        asset = await upload_row.get_attribute("data-id")
        assert asset
        assert cut["done"] and heads, (patches, heads)
        # The retry went on from what the server had: the offset of the first chunk.
        assert patches[:3] == ["0", str(5 * 1024 * 1024), str(5 * 1024 * 1024)], patches
        job = (await api.get(f"/api/vod/{asset}")).json()
        assert job["uploaded"] == size and job["state"] == "ready" and job["owner"] == "alice"

        # ---- price ------------------------------------------------------------------------
        await page.goto(f"{origin.url}/studio/#library")
        card = page.locator(f".card[data-asset='{asset}']")
        await card.wait_for(timeout=20_000)
        await card.locator("input.price").fill("2.99")
        await card.locator("button.set-price").click()
        await card.locator(".card-state:has-text('price set')").wait_for(timeout=20_000)
        bearer = {"Authorization": f"Bearer {studio.api_key}"}
        products = (await api.get("/api/products", headers=bearer)).json()["products"]
        assert [(p["kind"], p["price_cents"], p["scopes"]) for p in products] == [
            ("tvod", 299, [f"vod/{asset}"])
        ]
        assert (await api.get(f"/api/access/vod/{asset}")).json()["access"] == "token"
        await page.locator(f".card[data-asset='{asset}'] .policy:has-text('token')").wait_for()
        await shot(page, "library")

        # ---- embed code, copied and played in a host page ----------------------------------
        await page.goto(f"{origin.url}/studio/#embed")
        await page.wait_for_selector("#embed-source option[value='stream=show']", state="attached")
        await page.select_option("#embed-source", "stream=show")
        await page.select_option("#embed-kind", "iframe")
        await page.click("#copy-embed")
        code = await page.evaluate("navigator.clipboard.readText()")
        assert code.startswith("<iframe") and f"{origin.url}/player/embed.html?stream=show" in code
        preview = page.frame_locator("#embed-preview").frame_locator("iframe")
        await preview.locator("video").wait_for(timeout=20_000)
        await shot(page, "embed")
        html = f"""<!doctype html><html><body>{code}<script>
          window.messages = [];
          addEventListener("message", e => window.messages.push(e.data));
        </script></body></html>""".encode()
        server, host = await host_page(html)
        host_tab = await context.new_page()
        await host_tab.goto(f"{host}/host.html")

        async def host_plays() -> bool:
            messages = await host_tab.evaluate("window.messages")
            return any(m.get("source") == "meshcast" and m.get("type") == "play" for m in messages)

        await until(host_plays, "the embedded player playing in the host page", 60)
        server.close()
        await host_tab.close()

        # ---- the stream ends: its recording plays, seeking to the middle -------------------
        publisher.terminate()
        await publisher.wait()

        async def recorded() -> bool:
            body = (await api.get("/api/streams/show")).json()
            rec = body.get("recording") or {}
            return body["state"] == "ended" and rec.get("state") == "ready"

        await until(recorded, "the recording", 90)
        recording = (await api.get("/api/streams/show")).json()["recording"]["asset"]
        info = (await api.get(f"/api/vod/{recording}")).json()
        assert info["duration"] > 8, info
        player = await context.new_page()
        await player.goto(f"{edge.url}/player/?vod={recording}")
        await until(lambda: _advanced(player, 0.5), "VOD playback", 60)
        middle = float(info["duration"]) / 2
        await player.evaluate(f"document.getElementById('video').currentTime = {middle}")

        async def plays_from_middle() -> bool:
            t = await video_time(player)
            return t > middle + 1.0

        await until(plays_from_middle, "playback after seeking to the middle", 60)
        assert abs(await video_time(player) - middle) < 20
        await shot(player, "recording-seek")
        await page.goto(f"{origin.url}/studio/#library")
        await page.locator(f".card[data-asset='{recording}']").wait_for(timeout=20_000)
        await shot(page, "library-recording")
        await landing.goto(f"{origin.url}/")
        await landing.locator(f"a[href='/player/?vod={recording}']").wait_for()
        await shot(landing, "landing-recordings")
        # ---- network page: the node, its verified work, a closed epoch's rewards ----------
        coordinator = origin.coordinator
        assert coordinator is not None
        real = time.time()
        coordinator.clock = lambda: real + 2 * DAY  # end the epoch (no sleeping)
        closed = await asyncio.to_thread(coordinator.close_due)
        coordinator.clock = time.time
        assert closed, "no epoch closed"
        await page.goto(f"{origin.url}/studio/#network")
        await page.wait_for_selector("#nodes-table")
        assert "1 of 1 nodes live" in (await page.text_content("#network-state") or "")
        assert edge.url in (await page.text_content("#nodes-table") or "")
        # Its served bytes, as far as viewers' beacons verified them, and the closed epoch
        # (its reward may be 0: the coordinator's flags say why, in the table too).
        verified = await page.text_content("#nodes-table .verified-bytes") or ""
        assert verified.endswith("B") and verified != "0 B", verified
        await page.wait_for_selector("#network-chart svg text", state="attached")
        assert f"#{closed[0]}:" in (await page.text_content("#network-chart") or "")
        await shot(page, "network")
        assert page_errors == []


async def _advanced(page: Page, seconds: float) -> bool:
    return await video_time(page) > seconds
