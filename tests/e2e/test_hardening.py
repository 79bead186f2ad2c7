"""Entry-point hardening with real sockets and clients: headers, CORS scope, body limits,
slowloris, RTMP per-IP limits, key-guessing limits across RTMP/WHIP/API, least privilege
for stream keys, and secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig
from meshcast.http import HeaderDeadlineProtocol
from meshcast.keys import API_KIND
from origin.rtmp_server import _redact
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url, stream_json, wait_for_state
from tests.e2e.test_rtmp_ingest import ffmpeg_push

pytestmark = pytest.mark.e2e


@pytest.fixture
async def small_origin(tmp_path: Path) -> AsyncIterator[OriginService]:
    service = OriginService(
        OriginConfig(
            data_dir=tmp_path,
            http_port=0,
            rtmp_port=0,
            max_rtmp_connections_per_ip=2,
            rtmp_handshake_timeout=1.5,
        )
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def test_headers_and_cors_scope(origin: OriginService, tmp_path: Path) -> None:
    edge = EdgeService(EdgeConfig(origin=origin.url, port=free_port(), cache_dir=tmp_path / "e"))
    await edge.start()
    try:
        cross = {"Origin": "https://player.example"}
        async with httpx.AsyncClient() as c:
            for url in (f"{origin.url}/healthz", f"{edge.url}/healthz"):
                r = await c.get(url)
                assert r.status_code == 200 and "server" not in r.headers
            for path in ("/api/streams", "/api/products", "/api/tokens/keys", "/metrics"):
                r = await c.get(origin.url + path, headers=cross)
                assert "access-control-allow-origin" not in r.headers, path
            preflight = {**cross, "Access-Control-Request-Method": "POST"}
            r = await c.options(f"{origin.url}/api/tokens", headers=preflight)
            assert "access-control-allow-origin" not in r.headers
            for path in ("/live/x/master.m3u8", "/player/"):
                r = await c.get(origin.url + path, headers=cross)
                assert r.headers["access-control-allow-origin"] == "*", path
            r = await c.options(f"{origin.url}/whip/x", headers=preflight)
            assert r.headers["access-control-allow-origin"] == "*"
            r = await c.get(f"{edge.url}/live/x/master.m3u8", headers=cross)
            assert r.headers["access-control-allow-origin"] == "*"
    finally:
        await edge.close()


async def test_request_body_limits(origin: OriginService) -> None:
    key = origin.keys.create("alice", API_KIND)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=origin.url) as c:
        big = b'{"viewer": "' + b"x" * 20_000 + b'"}'
        r = await c.post("/api/tokens", content=big, headers=headers)
        assert r.status_code == 413 and "error" in r.json()

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length to trust
            for _ in range(40):
                yield b" " * 1024

        r = await c.post("/api/products", content=chunked(), headers=headers)
        assert r.status_code == 413
        r = await c.post("/whip/alice", content=b"v=0\r\n" * 20_000, headers=headers)
        assert r.status_code in (401, 413)  # an API key is no stream key: refused either way


async def test_slowloris_client_is_cut_off(
    origin: OriginService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(HeaderDeadlineProtocol, "header_timeout", 1.0)
    port = int(origin.url.rsplit(":", 1)[1])
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = loop.time()
    closed_after = None
    with contextlib.suppress(ConnectionError):
        for i in range(40):  # one header line every 0.2 s: would last 8 s
            writer.write(f"X-Slow-{i}: a\r\n".encode())
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                    closed_after = loop.time() - started
                    break
    writer.close()
    assert closed_after is not None and closed_after < 2.5, closed_after
    # An ordinary client is unaffected.
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{origin.url}/healthz")).status_code == 200


def rtmp_probe(port: int) -> bytes:
    """Connect and send C0+C1; what the server answers within 2 s (b"" = closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"\x03" + bytes(1536))
        try:
            return s.recv(1)
        except (ConnectionError, TimeoutError):
            return b""


async def test_rtmp_connections_per_ip(small_origin: OriginService) -> None:
    port = small_origin.rtmp.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(rtmp_probe, port) == b""  # third from this IP
        idle.pop().close()
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(rtmp_probe, port) == b"\x03"  # a slot again
    finally:
        for s in idle:
            s.close()
    async with httpx.AsyncClient() as c:
        text = (await c.get(f"{small_origin.url}/metrics")).text
    assert 'meshcast_rtmp_rejected_total{reason="ip_limit"} 1.0' in text


async def test_rtmp_handshake_dribble_is_cut_off(small_origin: OriginService) -> None:
    """One byte every 0.3 s never trips a per-read timeout; the handshake deadline does."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", small_origin.rtmp.port)
    started = loop.time()
    closed_after = None
    with contextlib.suppress(ConnectionError):
        for _ in range(30):
            writer.write(b"\x03")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.3) == b"":
                    closed_after = loop.time() - started
                    break
    writer.close()
    assert closed_after is not None and closed_after < 3.0, closed_after


def test_rtmp_log_redaction() -> None:
    assert _redact("live?key=stream_1_secret") == "live"
    assert _redact("live/stream_1_secret") == "live/…"
    assert _redact("rtmp://h:1935/live/stream_1_secret?x=1") == "rtmp://h:1935/live/…"
    assert _redact("rtmp://h:1935/live") == "rtmp://h:1935/live"


async def test_key_guessing_is_rate_limited_across_protocols(origin: OriginService) -> None:
    """Failures count per address across the API and WHIP: once over the limit, failed
    checks answer 429 (not 401) on both, while a valid key from the same address is still
    accepted (people behind one NAT share it; attack 7 of issue 20)."""
    good = origin.keys.create("alice", API_KIND)
    async with httpx.AsyncClient(base_url=origin.url) as c:
        for i in range(10):
            bad = f"api_{i:012x}_{'0' * 64}"
            r = await c.get("/api/products", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401
        r = await c.get("/api/products", headers={"Authorization": f"Bearer api_x_{'0' * 64}"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        r = await c.post(
            "/whip/alice",
            content=b"v=0",
            headers={"Authorization": "Bearer stream_0_0", "Content-Type": "application/sdp"},
        )
        assert r.status_code == 429
        r = await c.get("/api/products", headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200
    # RTMP from the same address still gets its handshake (a valid key may follow).
    assert await asyncio.to_thread(rtmp_probe, origin.rtmp.port) == b"\x03"


async def test_stream_key_publishes_only_its_own_stream_and_is_never_logged(
    origin: OriginService, ffmpeg_cli: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = origin.keys.create("alice")
    bob = origin.keys.create("bob")
    secret = alice.rsplit("_", 1)[1]
    typo = alice[:-1] + ("0" if alice[-1] != "0" else "1")
    async with httpx.AsyncClient(base_url=origin.url) as c:
        # WHIP: the URL names the stream, and it must be the key's own.
        r = await c.post(
            "/whip/bob",
            content=b"v=0\r\n",
            headers={"Authorization": f"Bearer {alice}", "Content-Type": "application/sdp"},
        )
        assert r.status_code == 401 and "'alice', not 'bob'" in r.json()["error"]
    # RTMP: the key decides the stream; a name or a wrong key publishes nothing.
    for url in (rtmp_url(origin, "bob"), rtmp_url(origin, typo)):
        proc = await ffmpeg_push(ffmpeg_cli, url, 1.0)
        await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, alice), 2.0)
    await wait_for_state(origin, "alice", "live")
    assert await stream_json(origin, "bob") is None
    await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "publish refused" in logged  # the failures were logged ...
    for leaked in (secret, typo.rsplit("_", 1)[1], bob.rsplit("_", 1)[1]):
        assert leaked not in logged  # ... without the secrets
