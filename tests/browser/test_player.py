"""The player in a real browser: Playwright driving Debian's headless Chromium, playing
the demo stream through an edge with hls.js and shaka-player."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig
from origin.demo import DemoSettings
from origin.service import OriginService
from tests.browser.chromium import ARTIFACTS, launch
from tests.conftest import free_port
from tests.e2e.test_ladder import wait_for_url

pytestmark = pytest.mark.e2e


@dataclass
class Site:
    origin: OriginService
    edge: EdgeService
    browser: Browser


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    # 480p demo: a two-rung ladder (480p, 360p) that 2 cores encode while Chromium decodes.
    origin = OriginService(
        OriginConfig(data_dir=tmp_path / "o", http_port=0, rtmp_port=0, demo=True),
        demo_settings=DemoSettings(width=854, height=480, fps=25, video_kbps=1200),
    )
    await origin.start()
    edge = EdgeService(EdgeConfig(origin=origin.url, port=free_port(), cache_dir=tmp_path / "e"))
    await edge.start()
    await wait_for_url(f"{edge.url}/live/demo/master.m3u8", 60)
    async with async_playwright() as pw:
        browser = await launch(pw)
        try:
            yield Site(origin, edge, browser)
        finally:
            await browser.close()
            await edge.close()
            await origin.close()


async def current_time(page: Page) -> float:
    return float(await page.evaluate("document.getElementById('video').currentTime"))


async def wait_playing(page: Page, seconds: float, within: float) -> float:
    """Wait until playback advanced ``seconds``; returns when it first moved."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    first_move = None
    base = None
    while loop.time() - start < within:
        t = await current_time(page)
        if t > 0 and first_move is None:
            first_move, base = loop.time() - start, t
        if base is not None and t - base >= seconds:
            assert first_move is not None
            return first_move
        await asyncio.sleep(0.25)
    raise AssertionError(f"playback did not advance {seconds} s within {within} s (at {t})")


async def errors(page: Page) -> list[object]:
    events = await page.evaluate("window.meshcastEvents")
    return [e for e in events if e["type"] == "error"]


async def test_hls_plays_switches_rung_and_looks_right(site: Site) -> None:
    page = await site.browser.new_page(viewport={"width": 1200, "height": 900})
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    segments: list[str] = []
    page.on("request", lambda r: segments.append(r.url) if r.url.endswith(".m4s") else None)
    await page.goto(f"{site.edge.url}/player/?stream=demo")
    started = await wait_playing(page, 4.0, 40)
    assert started < 10, f"playback started after {started:.1f} s"
    assert await errors(page) == [] and page_errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "player-hls.png"))
    stats = await page.text_content("#stats")
    assert stats is not None and "hls.js" in stats

    # force the lowest rung: new segment requests must come from its rendition
    options = await page.eval_on_selector_all("#quality option", "os => os.map(o => o.textContent)")
    assert [o.split(" ")[0] for o in options] == ["Auto", "480p", "360p"]
    segments.clear()
    await page.select_option("#quality", index=2)
    await wait_playing(page, 2.0, 30)
    video_segments = [u for u in segments if "/audio/" not in u]
    assert video_segments and all("/360p/" in u for u in video_segments[-2:]), video_segments
    assert await errors(page) == []


async def test_dash_mode_plays_with_shaka(site: Site) -> None:
    page = await site.browser.new_page()
    await page.goto(f"{site.edge.url}/player/?stream=demo&format=dash")
    await wait_playing(page, 4.0, 40)
    assert await errors(page) == []
    assert "shaka-player" in (await page.text_content("#stats") or "")


async def host_page(html: bytes) -> tuple[asyncio.Server, str]:
    """A dApp's page on another origin: its own server and port on loopback (Chromium's
    Local Network Access checks refuse a non-local page framing a loopback player)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
            + f"Content-Length: {len(html)}\r\n\r\n".encode()
            + html
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://localhost:{server.sockets[0].getsockname()[1]}"


async def test_embed_and_web_component_on_another_origin(site: Site) -> None:
    page = await site.browser.new_page()
    html = f"""<!doctype html><html><body>
      <iframe id="f" src="{site.edge.url}/player/embed.html?stream=demo"
              width="640" height="360" allow="autoplay"></iframe>
      <script src="{site.edge.url}/player/meshcast-player.js"></script>
      <meshcast-player id="c" stream="demo" style="width:320px"></meshcast-player>
      <script>
        window.messages = [];
        window.addEventListener("message", e => window.messages.push(e.data));
        window.componentEvents = [];
        document.getElementById("c").addEventListener("play",
          e => window.componentEvents.push(e.detail.type));
      </script></body></html>""".encode()

    server, host = await host_page(html)
    await page.goto(f"{host}/host.html")
    for _ in range(120):
        messages = await page.evaluate("window.messages")
        component = await page.evaluate("window.componentEvents")
        if any(m.get("type") == "play" for m in messages) and component:
            break
        await asyncio.sleep(0.25)
    assert any(m.get("source") == "meshcast" and m.get("type") == "play" for m in messages), (
        messages,
        [await f.evaluate("window.meshcastEvents || null") for f in page.frames[1:]],
        [f.url for f in page.frames],
    )
    assert component and component[0] == "play"
    server.close()


async def test_offline_stream_shows_a_message(site: Site) -> None:
    page = await site.browser.new_page()
    await page.goto(f"{site.edge.url}/player/?stream=nobody")
    await page.wait_for_selector("#message.shown", timeout=10_000)
    assert "offline" in (await page.text_content("#message") or "")
    landing = await page.goto(f"{site.edge.url}/")
    assert landing is not None and landing.status == 200
    assert await page.locator('a[href="/player/?stream=demo"]').count() == 1
