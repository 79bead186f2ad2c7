"""Playback access control end to end: origin + 2 edges in-process, ffmpeg publishing over
RTMP, httpx and libavformat (ffmpeg CLI) playing through an edge with the token in the URL."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edge.service import EdgeService
from meshcast.config import EdgeConfig
from meshcast.keys import ADMIN_KIND, API_KIND
from meshcast.tokens import Claims, b64url_encode
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url, wait_for_state
from tests.e2e.test_edge import Mesh, metric, running_mesh
from tests.e2e.test_ladder import run_tool, wait_for_url
from tests.e2e.test_rtmp_ingest import ffmpeg_push

pytestmark = pytest.mark.e2e


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    # Long enough that "no origin request" below cannot be a policy refresh.
    async with running_mesh(tmp_path, access_policy_ttl=120.0) as m:
        yield m


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def edge_counters(mesh: Mesh) -> tuple[float, float]:
    """(origin media fetches, policy + key fetches) summed over the edges."""
    media = control = 0.0
    async with httpx.AsyncClient() as c:
        for edge in mesh.edges:
            text = (await c.get(f"{edge.url}/metrics")).text
            media += metric(text, "meshcast_edge_origin_fetches_total")
            control += metric(text, "meshcast_edge_policy_fetches_total")
            control += metric(text, "meshcast_edge_key_fetches_total")
    return media, control


async def test_token_protected_stream_through_the_edge(mesh: Mesh, ffmpeg_cli: str) -> None:
    o = mesh.origin
    stream_key = o.keys.create("paid", owner="alice")
    alice = o.keys.create("alice", API_KIND)
    bob = o.keys.create("bob", API_KIND)
    admin = o.keys.create("shop", ADMIN_KIND)
    async with httpx.AsyncClient(base_url=o.url, timeout=30) as api:
        # Least privilege: bob's API key cannot protect (or sell) alice's stream.
        r = await api.put("/api/access/live/paid", json={"access": "token"}, headers=bearer(bob))
        assert r.status_code == 403 and "error" in r.json()
        r = await api.put("/api/access/live/paid", json={"access": "token"}, headers=bearer(alice))
        assert r.json() == {"scope": "live/paid", "access": "token", "owner": "alice"}
        r = await api.post(
            "/api/products",
            headers=bearer(alice),
            json={
                "kind": "tvod",
                "name": "Paid event",
                "price_cents": 500,
                "duration_s": 3600,
                "scopes": ["live/paid"],
            },
        )
        assert r.status_code == 201, r.text
        product = r.json()["id"]
        # Only the admin/webhook key records purchases.
        r = await api.post(
            "/api/entitlements", headers=bearer(alice), json={"viewer": "v1", "product": product}
        )
        assert r.status_code == 403
        r = await api.post(
            "/api/entitlements", headers=bearer(admin), json={"viewer": "v1", "product": product}
        )
        assert r.status_code == 201
        r = await api.post(
            "/api/tokens", headers=bearer(alice), json={"viewer": "v2", "scope": "live/paid"}
        )
        assert r.status_code == 403 and r.json()["reason"] == "purchase"
        r = await api.post(
            "/api/tokens", headers=bearer(bob), json={"viewer": "v1", "scope": "live/paid"}
        )
        assert r.status_code == 403
        r = await api.post(
            "/api/tokens", headers=bearer(alice), json={"viewer": "v1", "scope": "live/paid"}
        )
        assert r.status_code == 201
        token = r.json()["token"]
        assert r.json()["exp"] <= time.time() + 600 + 1

    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(o, stream_key), 3.0)
    await asyncio.wait_for(proc.communicate(), 60)
    await wait_for_state(o, "paid", "ended")

    edge = mesh.edges[0].url
    async with httpx.AsyncClient(timeout=30) as c:
        # The origin itself enforces too (no bypass around the edges).
        r = await c.get(f"{o.url}/live/paid/360p/index.m3u8")
        assert r.status_code == 401 and r.json()["reason"] == "token_required"
        playlist = await wait_for_url(
            f"{o.url}/live/paid/360p/index.m3u8?token={token}", 60, "ENDLIST"
        )
        assert all(
            line.endswith(f"?token={token}")
            for line in playlist.text.splitlines()
            if line and not line.startswith("#")
        )

        mpd = await c.get(f"{edge}/live/paid/manifest.mpd?token={token}")
        assert mpd.status_code == 200
        assert f'media="$RepresentationID$/$Number$.m4s?token={token}"' in mpd.text
        master = await c.get(f"{edge}/live/paid/master.m3u8?token={token}")
        assert master.status_code == 200, master.text
        children = [ln for ln in master.text.splitlines() if ln and not ln.startswith("#")]
        assert children and all(ch.endswith(f"?token={token}") for ch in children)
        assert master.headers["cache-control"] == "private, no-store"
        media = await c.get(f"{edge}/live/paid/{children[-1]}")
        assert media.status_code == 200
        assert re.search(r'URI="init-[0-9]+\.mp4\?token=', media.text), media.text
        segment = re.findall(r"^(\d+\.m4s)\?token=", media.text, re.M)[0]
        rendition = children[-1].split("/")[0]
        seg_url = f"{edge}/live/paid/{rendition}/{segment}"
        first = await c.get(f"{seg_url}?token={token}")
        second = await c.get(f"{seg_url}?token={token}")
        assert first.status_code == second.status_code == 200
        assert second.headers["x-cache"] == "HIT" and second.content == first.content

        # Refusals: decided at the edge from cached keys and policy, no origin request.
        before = await edge_counters(mesh)
        expired = o.keyring.mint(
            Claims("live/paid", exp=int(time.time()) - 120, nbf=0, iat=0, sub="v1")
        )
        wrong_scope = o.keyring.mint(
            Claims("live/other", exp=int(time.time()) + 600, nbf=0, iat=0, sub="v1")
        )
        v, kid, _payload, sig = token.split(".")
        forged = ".".join(
            (
                v,
                kid,
                b64url_encode(b'{"scope":"catalog/alice","exp":9999999999,"nbf":0,"iat":0}'),
                sig,
            )
        )
        cases = [
            (None, 401, "token_required"),
            (expired, 401, "expired"),
            (forged, 401, "bad_signature"),
            ("garbage", 401, "malformed"),
            (wrong_scope, 403, "wrong_scope"),
        ]
        for bad, status, reason in cases:
            for url in (
                seg_url,
                f"{edge}/live/paid/master.m3u8",
                f"{edge}/live/paid/{rendition}/init.mp4",
            ):
                # The segment is cached in memory (FastPath territory): still refused.
                r = await c.get(url, params={"token": bad} if bad else None)
                assert (r.status_code, r.json()["reason"]) == (status, reason), (url, bad)
        assert await edge_counters(mesh) == before
        denied = (await c.get(f"{edge}/metrics")).text
        assert metric(denied, "meshcast_edge_access_denied_total", '{reason="expired"}') == 3

    # A real player (libavformat) plays through the other edge with the token in the URL
    # (children carry it by rewriting); without it, it cannot open the stream.
    other = mesh.edges[1].url
    rc, _, err = await run_tool(
        "ffmpeg",
        "-v",
        "error",
        "-i",
        f"{other}/live/paid/master.m3u8?token={token}",
        "-map",
        "0",
        "-f",
        "null",
        "-",
    )
    assert rc == 0 and not err.strip(), err
    # Shared cached manifests (owner and non-owner edges alike) never hold a viewer's token.
    cached = [
        obj.body
        for e in mesh.edges
        for path in ("master.m3u8", "manifest.mpd", f"{rendition}/index.m3u8")
        if (obj := e.edge.cache.get(f"/live/paid/{path}")) is not None and obj.body
    ]
    assert cached and all(b"token=" not in body for body in cached)
    # ... and both edges keep one (a peer's answer is plain and cacheable, not per-viewer).
    assert all(e.edge.cache.get("/live/paid/master.m3u8") is not None for e in mesh.edges)
    rc, _, err = await run_tool(
        "ffmpeg", "-v", "error", "-i", f"{other}/live/paid/master.m3u8", "-f", "null", "-"
    )
    assert rc != 0 and "401" in err


async def test_public_stream_unchanged_and_switchable(mesh: Mesh, ffmpeg_cli: str) -> None:
    """public is the default: no token, no rewriting, shared cache; then protected."""
    o = mesh.origin
    key = o.keys.create("free")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(o, key), 3.0)
    await asyncio.wait_for(proc.communicate(), 60)
    await wait_for_state(o, "free", "ended")
    await wait_for_url(f"{o.url}/live/free/360p/index.m3u8", 60, "ENDLIST")
    edge = mesh.edges[0].url
    async with httpx.AsyncClient(timeout=30) as c:
        master = await c.get(f"{edge}/live/free/master.m3u8")
        assert master.status_code == 200 and "token=" not in master.text
        media = await c.get(f"{edge}/live/free/360p/index.m3u8")
        segment = re.findall(r"^(\d+\.m4s)$", media.text, re.M)[0]
        for _ in range(2):
            r = await c.get(f"{edge}/live/free/360p/{segment}")
            assert r.status_code == 200
        assert r.headers["x-cache"] == "HIT"
        # An unrelated token on a public stream is ignored, not an error.
        r = await c.get(f"{edge}/live/free/360p/{segment}?token=whatever")
        assert r.status_code == 200
    api = o.keys.create("free", API_KIND)
    async with httpx.AsyncClient(base_url=o.url) as c:
        r = await c.put("/api/access/live/free", json={"access": "token"}, headers=bearer(api))
        assert r.status_code == 200
    # A fresh edge (nothing cached) learns the policy at its first request.
    fresh = EdgeService(
        EdgeConfig(origin=o.url, port=free_port(), cache_dir=mesh.edges[0].config.cache_dir / "f")
    )
    await fresh.start()
    try:
        async with httpx.AsyncClient() as c:
            r = await c.get(f"{fresh.url}/live/free/360p/{segment}")
            assert r.status_code == 401 and r.json()["reason"] == "token_required"
    finally:
        await fresh.close()


async def test_tvod_rental_expires_and_tokens_never_outlive_it(origin: OriginService) -> None:
    now = [time.time()]
    origin.access.clock = lambda: now[0]
    origin.access_api.clock = lambda: now[0]
    origin.keys.create("match", owner="club")
    club = origin.keys.create("club", API_KIND)
    admin = origin.keys.create("ops", ADMIN_KIND)
    async with httpx.AsyncClient(base_url=origin.url) as c:
        r = await c.post(
            "/api/products",
            headers=bearer(club),
            json={
                "kind": "tvod",
                "name": "Match replay",
                "price_cents": 299,
                "duration_s": 900,
                "scopes": ["live/match"],
            },
        )
        product = r.json()["id"]
        r = await c.post(
            "/api/entitlements", headers=bearer(admin), json={"viewer": "fan", "product": product}
        )
        grant = r.json()
        assert grant["expires_at"] - grant["granted_at"] == 900
        body = {"viewer": "fan", "scope": "live/match", "ttl": 3600}
        r = await c.post("/api/tokens", headers=bearer(club), json=body)
        assert r.status_code == 201 and r.json()["exp"] == int(grant["expires_at"])
        now[0] += 899
        assert (await c.post("/api/tokens", headers=bearer(club), json=body)).status_code == 201
        now[0] += 1
        r = await c.post("/api/tokens", headers=bearer(club), json=body)
        assert r.status_code == 403 and r.json()["reason"] == "purchase"
        # SVOD plan over exactly {live/match}: nothing else of the club.
        origin.keys.create("other", owner="club")
        r = await c.post(
            "/api/products",
            headers=bearer(club),
            json={
                "kind": "svod",
                "name": "Season",
                "price_cents": 999,
                "duration_s": 86400,
                "scopes": ["live/match"],
            },
        )
        await c.post(
            "/api/entitlements",
            headers=bearer(admin),
            json={"viewer": "fan", "product": r.json()["id"]},
        )
        assert (await c.post("/api/tokens", headers=bearer(club), json=body)).status_code == 201
        other = {"viewer": "fan", "scope": "live/other"}
        assert (await c.post("/api/tokens", headers=bearer(club), json=other)).status_code == 403


async def test_key_rotation_reaches_the_edge(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token signed by a key the edge has not seen yet: one key-set refetch, then offline
    again; the previous key keeps verifying."""
    o = mesh.origin
    admin = o.keys.create("ops", ADMIN_KIND)
    async with httpx.AsyncClient(base_url=o.url) as c:
        r = await c.put(
            "/api/access/live/rot",
            json={"access": "token", "owner": "studio"},
            headers=bearer(admin),
        )
        assert r.status_code == 200
    claims = Claims("live/rot", exp=int(time.time()) + 600, nbf=0, iat=0, sub="v")
    old = o.keyring.mint(claims)
    o.keyring.rotate()
    new = o.keyring.mint(claims)
    monkeypatch.setattr("edge.access.UNKNOWN_KID_REFETCH_S", 0.0)
    edge = mesh.edges[0]
    url = f"{edge.url}/live/rot/master.m3u8"
    async with httpx.AsyncClient() as c:
        fetches = edge.edge.access.key_fetches._value.get()
        for token in (new, new, old):
            r = await c.get(url, params={"token": token})
            # Admitted: the stream has no media, so the origin's 404 comes through.
            assert r.status_code == 404, r.text
        assert edge.edge.access.key_fetches._value.get() == fetches + 1
