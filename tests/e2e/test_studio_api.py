"""The studio's API (/api/me, /api/keys) and files on the origin and an edge, with httpx:
sign-in errors, stream keys owned per creator, the hand-over from an edge to the origin."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from edge.service import EdgeService
from meshcast.config import EdgeConfig
from meshcast.keys import API_KIND, KeyRejected
from origin.service import OriginService
from tests.conftest import free_port

pytestmark = pytest.mark.e2e


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_sign_in_and_stream_keys(origin: OriginService) -> None:
    alice = origin.keys.create("alice", API_KIND)
    bob = origin.keys.create("bob", API_KIND)
    gone = origin.keys.create("carol", API_KIND)
    origin.keys.revoke("carol", API_KIND)
    stream_key = origin.keys.create("bobshow", owner="bob")
    async with httpx.AsyncClient(base_url=origin.url) as api:
        r = await api.get("/api/me")
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        for key, reason in ((gone, "revoked"), ("api_00_xx", "unknown api key"),
                            (stream_key, "malformed api key")):  # fmt: skip
            r = await api.get("/api/me", headers=bearer(key))
            assert r.status_code == 401 and reason in r.json()["error"], r.text
        me = (await api.get("/api/me", headers=bearer(alice))).json()
        assert me["owner"] == "alice" and me["kind"] == "api"
        assert me["rtmp"] == f"rtmp://127.0.0.1:{origin.rtmp.port}/live"
        assert me["whip"] == f"{origin.url}/whip/"

        r = await api.post("/api/keys", headers=bearer(alice), json={"name": "../x"})
        assert r.status_code == 400 and "invalid stream name" in r.json()["error"]
        r = await api.post("/api/keys", headers=bearer(alice), json={"name": "a", "record": "no"})
        assert r.status_code == 400
        r = await api.post("/api/keys", headers=bearer(alice), json={"name": "bobshow"})
        assert r.status_code == 409 and "taken" in r.json()["error"]
        r = await api.post("/api/keys", headers=bearer(alice),
                           json={"name": "quiet", "record": False})  # fmt: skip
        assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
        created = r.json()
        assert origin.keys.verify(created["key"]) == "quiet"
        assert origin.keys.owner_of("quiet") == "alice" and not origin.keys.records("quiet")

        mine = (await api.get("/api/keys", headers=bearer(alice))).json()["keys"]
        assert [(k["name"], k["record"]) for k in mine] == [("quiet", False)]
        r = await api.delete("/api/keys/bobshow", headers=bearer(alice))
        assert r.status_code == 403 and "not yours" in r.json()["error"]
        r = await api.delete("/api/keys/nobody", headers=bearer(alice))
        assert r.status_code == 404
        r = await api.delete("/api/keys/quiet", headers=bearer(alice))
        assert r.status_code == 204
        with pytest.raises(KeyRejected, match="revoked"):
            origin.keys.verify(created["key"])
        assert (await api.get("/api/keys", headers=bearer(bob))).json()["keys"][0]["name"] == (
            "bobshow"
        )


async def test_studio_files_on_origin_and_edge(origin: OriginService, tmp_path: Path) -> None:
    edge = EdgeService(EdgeConfig(origin=origin.url, port=free_port(), cache_dir=tmp_path / "e"))
    await edge.start()
    try:
        async with httpx.AsyncClient() as client:
            for base in (origin.url, edge.url):
                bare = await client.get(f"{base}/studio")
                assert bare.status_code == 307 and bare.headers["location"].endswith("/studio/")
                page = await client.get(f"{base}/studio/")
                assert page.status_code == 200 and "meshcast studio" in page.text
                assert page.headers["content-type"].startswith("text/html")
                script = await client.get(f"{base}/studio/studio.js")
                assert script.status_code == 200 and "tus.Upload" in script.text
                tus = await client.get(f"{base}/studio/vendor/tus.min.js")
                assert tus.status_code == 200 and len(tus.content) > 10_000
                missing = await client.get(f"{base}/studio/../keys.json")
                assert missing.status_code == 404
            assert (await client.get(f"{origin.url}/studio/config.json")).json() == {"api": ""}
            on_edge = (await client.get(f"{edge.url}/studio/config.json")).json()
            assert on_edge == {"api": origin.url}
    finally:
        await edge.close()
