"""The player on a token-protected stream in Chromium: "purchase required" without a valid
token (with the edge's reason), playback with ``&token=`` (children carry it), and
short-lived tokens renewed by the host page while playing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import edge.access
from edge.access import POLICY_TTL_S
from meshcast.keys import ADMIN_KIND
from tests.browser.test_player import Site, errors, host_page, site, wait_playing

pytestmark = pytest.mark.e2e
__all__ = ["site"]


async def protect_demo(site: Site) -> dict[str, str]:
    """Make live/demo token-only for the creator "studio" and give viewer "ann" a pass;
    returns the admin's auth header (for POST /api/tokens)."""
    o = site.origin
    admin = o.keys.create("ops", ADMIN_KIND)
    auth = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=o.url) as c:
        r = await c.put(
            "/api/access/live/demo", json={"access": "token", "owner": "studio"}, headers=auth
        )
        assert r.status_code == 200
        r = await c.post(
            "/api/products",
            headers=auth,
            json={
                "owner": "studio",
                "kind": "svod",
                "name": "Studio pass",
                "price_cents": 500,
                "duration_s": 3600,
                "scopes": ["catalog/studio"],
            },
        )
        await c.post(
            "/api/entitlements", headers=auth, json={"viewer": "ann", "product": r.json()["id"]}
        )
    # The edge played demo publicly during set-up: its cached policy lasts POLICY_TTL_S
    # (past it, a request with a token waits for the fresh policy instead of the stale one).
    await asyncio.sleep(POLICY_TTL_S + 0.5)
    return auth


async def mint(site: Site, auth: dict[str, str], ttl: int = 3600) -> str:
    async with httpx.AsyncClient(base_url=site.origin.url) as c:
        r = await c.post(
            "/api/tokens", headers=auth, json={"viewer": "ann", "scope": "live/demo", "ttl": ttl}
        )
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


async def test_purchase_required_then_plays_with_token(site: Site) -> None:
    auth = await protect_demo(site)
    token = await mint(site, auth)

    for query, reason in (("", "token_required"), ("&token=v1.x.y.z", "malformed")):
        page = await site.browser.new_page()
        await page.goto(f"{site.edge.url}/player/?stream=demo{query}")
        await page.wait_for_selector("#message.shown.purchase", timeout=15_000)
        text = await page.text_content("#message") or ""
        assert "Purchase required" in text and reason in text
        events = await errors(page)
        assert events and events[-1]["detail"] == "purchase_required"  # type: ignore[index]
        assert await page.evaluate("document.getElementById('video').currentTime") == 0
        await page.close()

    page = await site.browser.new_page()
    media: list[str] = []
    page.on("request", lambda r: media.append(r.url) if ".m4s" in r.url else None)
    await page.goto(f"{site.edge.url}/player/?stream=demo&token={token}")
    await wait_playing(page, 3.0, 40)
    assert not await page.locator("#message.purchase").count()
    assert media and all(f"token={token}" in u for u in media)


async def test_short_lived_tokens_are_renewed_by_the_host_page(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dApp embeds <meshcast-player token=…> with 12 s tokens and renews them on
    "tokenexpiring": playback runs through several token lifetimes without a 401, and
    every later request carries a newer token. The same player without a renewing host
    stops with "purchase required" (expired) once its token runs out."""
    # Edges accept tokens 30 s past exp (clock skew): none here, so 12 s means 12 s.
    monkeypatch.setattr(edge.access, "CLOCK_SKEW", 0)
    auth = await protect_demo(site)
    minted: list[str] = []

    async def fresh_token() -> str:
        minted.append(await mint(site, auth, ttl=12))
        return minted[-1]

    first = await fresh_token()
    html = f"""<!doctype html><html><body>
      <script src="{site.edge.url}/player/meshcast-player.js"></script>
      <meshcast-player id="p" stream="demo" token="{first}" style="width:480px"></meshcast-player>
      <script>
        window.renewals = 0;
        window.seen = [];
        const player = document.getElementById("p");
        for (const type of ["tokenexpiring", "tokenrenewed", "error", "play"]) {{
          player.addEventListener(type, (e) => window.seen.push(e.detail));
        }}
        player.addEventListener("tokenexpiring", async () => {{
          if (!window.renew) return;
          window.renewals += 1;
          player.setToken(await window.newToken());
        }});
      </script></body></html>""".encode()

    server, host = await host_page(html)
    renewing = await site.browser.new_page()
    await renewing.expose_function("newToken", fresh_token)
    await renewing.add_init_script("window.renew = true")
    media: list[str] = []
    renewing.on("request", lambda r: media.append(r.url) if "/live/demo/" in r.url else None)
    stale = await site.browser.new_page()  # the same page, nobody renews
    await asyncio.gather(renewing.goto(f"{host}/host.html"), stale.goto(f"{host}/host.html"))

    async def player_time(page: Any) -> float:
        frame = page.frames[1]
        return float(await frame.evaluate("document.getElementById('video').currentTime"))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 90
    while loop.time() < deadline and await player_time(renewing) < 32:
        await asyncio.sleep(0.5)
    seen = await renewing.evaluate("window.seen")
    assert await player_time(renewing) >= 32, seen  # past two and a half token lifetimes
    assert not [e for e in seen if e["type"] == "error"], seen
    assert await renewing.evaluate("window.renewals") >= 3
    assert len(minted) >= 4 and any(e["type"] == "tokenrenewed" for e in seen)
    late = media[-5:]
    assert late and all("token=" in u for u in late)
    assert not any(f"token={first}" in u for u in late)  # newer tokens only
    # The page nobody renews for: stopped once its first token expired, with the reason.
    stale_events = await stale.evaluate("window.seen")
    stops = [e for e in stale_events if e["type"] == "error"]
    assert stops and stops[0]["detail"] == "purchase_required" and stops[0]["reason"] == "expired"
    types = [e["type"] for e in stale_events]
    assert "play" in types[: types.index("error")]  # it played until then
    server.close()
