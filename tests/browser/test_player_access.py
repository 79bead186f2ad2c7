"""The player on a token-protected stream in Chromium: "purchase required" without a valid
token (with the edge's reason), playback with ``&token=`` (children carry it)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from edge.access import POLICY_TTL_S
from meshcast.keys import ADMIN_KIND
from tests.browser.test_player import Site, errors, site, wait_playing

pytestmark = pytest.mark.e2e
__all__ = ["site"]


async def test_purchase_required_then_plays_with_token(site: Site) -> None:
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
        r = await c.post("/api/tokens", headers=auth, json={"viewer": "ann", "scope": "live/demo"})
        token = r.json()["token"]
    # The edge played demo publicly during set-up: its cached policy lasts POLICY_TTL_S.
    await asyncio.sleep(POLICY_TTL_S + 0.5)

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
