"""Edges with real HTTP clients (httpx, curl) and libavformat's HLS demuxer."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig
from meshcast.events import EventBus
from meshcast.http import HttpService
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url, wait_for_state
from tests.e2e.test_ladder import run_tool, wait_for_url
from tests.e2e.test_rtmp_ingest import ffmpeg_push

pytestmark = pytest.mark.e2e


@dataclass
class Mesh:
    origin: OriginService
    edges: list[EdgeService]


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def origin_fetches(edges: list[EdgeService]) -> float:
    total = 0.0
    async with httpx.AsyncClient() as client:
        for edge in edges:
            text = (await client.get(f"{edge.url}/metrics")).text
            total += metric(text, "meshcast_edge_origin_fetches_total")
    return total


@contextlib.asynccontextmanager
async def running_mesh(
    tmp_path: Path,
    edges: int = 2,
    origin_config: OriginConfig | None = None,
    bus: EventBus | None = None,
    **edge_options: Any,
) -> AsyncIterator[Mesh]:
    """An origin and a ring of ``edges`` edges (peers of each other, sharing ``bus`` when
    given), closed afterwards."""
    origin = OriginService(
        origin_config
        or OriginConfig(data_dir=tmp_path / "origin", http_port=free_port(), rtmp_port=0)
    )
    await origin.start()
    ports = [free_port() for _ in range(edges)]
    services = [
        EdgeService(
            EdgeConfig(
                origin=origin.url,
                port=port,
                peers=tuple(f"http://127.0.0.1:{p}" for p in ports if p != port),
                cache_dir=tmp_path / f"edge-{port}",
                **edge_options,
            ),
            bus,
        )
        for port in ports
    ]
    for service in services:
        await service.start()
    try:
        yield Mesh(origin, services)
    finally:
        for service in services:
            await service.close()
        await origin.close()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path, cache_disk=64 * 1024 * 1024) as m:
        yield m


async def published(mesh: Mesh, ffmpeg: str, name: str, seconds: float) -> str:
    """Publish and wait for the end; returns the 360p media playlist text."""
    key = mesh.origin.keys.create(name)
    proc = await ffmpeg_push(ffmpeg, rtmp_url(mesh.origin, key), seconds)
    await asyncio.wait_for(proc.communicate(), 60)
    await wait_for_state(mesh.origin, name, "ended")
    return (
        await wait_for_url(f"{mesh.origin.url}/live/{name}/360p/index.m3u8", 60, "ENDLIST")
    ).text


async def test_200_concurrent_gets_cause_one_origin_fetch(mesh: Mesh, ffmpeg_cli: str) -> None:
    playlist = await published(mesh, ffmpeg_cli, "hot", 3.0)
    segment = re.findall(r"^(\d+\.m4s)$", playlist, re.M)[0]
    path = f"/live/hot/360p/{segment}"
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200), timeout=30) as c:
        reference = (await c.get(mesh.origin.url + path)).content
        before = await origin_fetches(mesh.edges)
        edge = mesh.edges[0].url
        responses = await asyncio.gather(*(c.get(edge + path) for _ in range(200)))
    assert all(r.status_code == 200 for r in responses)
    assert all(r.content == reference for r in responses)
    labels = {r.headers["x-cache"] for r in responses}
    assert labels <= {"MISS", "PEER", "COALESCED", "HIT"} and "COALESCED" in labels
    assert await origin_fetches(mesh.edges) - before == 1


async def test_http_semantics_with_curl_and_httpx(mesh: Mesh, ffmpeg_cli: str) -> None:
    playlist = await published(mesh, ffmpeg_cli, "sem", 3.0)
    segment = re.findall(r"^(\d+\.m4s)$", playlist, re.M)[0]
    url = f"{mesh.edges[1].url}/live/sem/360p/{segment}"
    async with httpx.AsyncClient() as c:
        full = await c.get(url)
        assert full.status_code == 200 and full.headers["content-type"] == "video/iso.segment"
        assert "content-encoding" not in full.headers
        etag = full.headers["etag"]
        again = await c.get(url)
        assert again.headers["x-cache"] == "HIT" and again.content == full.content
        ranged = await c.get(url, headers={"Range": "bytes=10-109"})
        assert ranged.status_code == 206 and ranged.content == full.content[10:110]
        assert ranged.headers["content-range"] == f"bytes 10-109/{len(full.content)}"
        bad = await c.get(url, headers={"Range": f"bytes={len(full.content)}-"})
        assert bad.status_code == 416
        assert (await c.get(url, headers={"If-None-Match": etag})).status_code == 304
        head = await c.head(url)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(full.content)
        preflight = await c.options(
            url,
            headers={"Origin": "https://dapp.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        cors = await c.get(url, headers={"Origin": "https://dapp.example"})
        assert "X-Cache" in cors.headers["access-control-expose-headers"]
        for bad_path in (
            "/live/sem/../../keys.json",
            "/live/sem/360p/%2e%2e/%2e%2e/keys.json",
            "/live/sem/360p/0.m4s%00",
            "//etc/passwd",
            "/live/sem/999p/1.m4s/x",
        ):
            r = await c.get(mesh.edges[1].url + bad_path)
            assert r.status_code == 404, bad_path
        long = await c.get(f"{mesh.edges[1].url}/live/{'a' * 3000}/master.m3u8")
        assert long.status_code == 414
    # curl, an independent client, gets the same bytes for a range
    target = mesh.edges[1].config.cache_dir / "curl.out"
    rc, _, err = await run_tool("curl", "-sS", "-f", "-r", "0-99", "-o", str(target), url)
    assert rc == 0, err
    assert target.read_bytes() == full.content[:100]


async def test_live_playback_through_each_edge_of_the_ring(mesh: Mesh, ffmpeg_cli: str) -> None:
    key = mesh.origin.keys.create("ring")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(mesh.origin, key), 12.0)
    await wait_for_url(f"{mesh.origin.url}/live/ring/master.m3u8", 30)
    for edge in mesh.edges:
        rc, _, err = await run_tool(
            "ffmpeg",
            "-v",
            "error",
            "-i",
            f"{edge.url}/live/ring/master.m3u8",
            "-map",
            "0",
            "-t",
            "3",
            "-f",
            "null",
            "-",
        )
        assert rc == 0 and not err.strip(), err
    await asyncio.wait_for(proc.communicate(), 60)
    # both edges served, and the ring split the objects between them
    async with httpx.AsyncClient() as c:
        texts = [(await c.get(f"{e.url}/metrics")).text for e in mesh.edges]
    for text in texts:
        assert (
            metric(text, "meshcast_edge_requests_total", '{cache="HIT"}')
            + metric(text, "meshcast_edge_requests_total", '{cache="MISS"}')
            + metric(text, "meshcast_edge_requests_total", '{cache="PEER"}')
            > 0
        )
    log = (mesh.edges[0].config.cache_dir / "access.csv").read_text().splitlines()
    assert log[0] == "ts,client,path,bytes"
    assert any(",127.0.0.1,/live/ring/" in line for line in log[1:])


async def test_origin_down_stale_then_recovery(mesh: Mesh, ffmpeg_cli: str) -> None:
    playlist = await published(mesh, ffmpeg_cli, "down", 3.0)
    segments = re.findall(r"^(\d+\.m4s)$", playlist, re.M)
    edge = mesh.edges[0].url
    async with httpx.AsyncClient(timeout=10) as c:
        for seg in segments:
            assert (await c.get(f"{edge}/live/down/360p/{seg}")).status_code == 200
        assert (await c.get(f"{edge}/live/down/360p/index.m3u8")).status_code == 200
        await mesh.origin.http.close()  # the origin dies
        deadline = asyncio.get_running_loop().time() + 31
        while asyncio.get_running_loop().time() < deadline:
            pl = await c.get(f"{edge}/live/down/360p/index.m3u8")
            assert pl.status_code == 200 and pl.headers["x-cache"] in ("STALE", "HIT")
            for seg in segments:
                r = await c.get(f"{edge}/live/down/360p/{seg}")
                assert r.status_code == 200 and r.headers["x-cache"] in ("HIT", "STALE")
            await asyncio.sleep(5)
        assert pl.headers["x-cache"] == "STALE"
        missing = await c.get(f"{edge}/live/down/720p/index.m3u8")
        assert missing.status_code == 502 and "unreachable" in missing.json()["error"]
        # the origin comes back on the same port: edges recover on their own
        origin = mesh.origin
        origin.http = HttpService(origin.app, origin.config.host, origin.config.http_port, "o")
        await origin.http.start()
        recovered = await c.get(f"{edge}/live/down/360p/index.m3u8")
        assert recovered.status_code == 200 and recovered.headers["x-cache"] in ("MISS", "PEER")


async def test_one_edge_killed_the_other_serves_everything(mesh: Mesh, ffmpeg_cli: str) -> None:
    playlist = await published(mesh, ffmpeg_cli, "solo", 5.0)
    segments = re.findall(r"^(\d+\.m4s)$", playlist, re.M)
    survivor, victim = mesh.edges
    await victim.http.close()
    async with httpx.AsyncClient(timeout=10) as c:
        for rendition in ("360p", "audio"):
            for seg in segments:
                r = await c.get(f"{survivor.url}/live/solo/{rendition}/{seg}")
                assert r.status_code == 200
        assert (await c.get(f"{survivor.url}/live/solo/master.m3u8")).status_code == 200
        health = (await c.get(f"{survivor.url}/healthz")).json()
    assert health["peers_alive"] == []


async def test_truncated_fill_fails_waiters_and_is_retried(tmp_path: Path) -> None:
    """An upstream that dies mid-body: every waiter gets a broken response, nothing is
    cached, and the next request fetches again."""
    connections = 0
    body = bytes(range(256)) * 400  # 102400 bytes announced, 30000 sent

    async def truncating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: video/iso.segment\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:30000]
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()

    server = await asyncio.start_server(truncating, "127.0.0.1", 0)
    origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    # A bare HTTP server, not a meshcast origin: it has no access policies to ask.
    edge = EdgeService(
        EdgeConfig(origin=origin, port=free_port(), cache_dir=tmp_path, access_control=False)
    )
    await edge.start()
    try:
        url = f"{edge.url}/live/x/360p/1.m4s"
        async with httpx.AsyncClient(timeout=10) as c:

            async def fetch() -> str:
                try:
                    r = await c.get(url)
                except httpx.HTTPError as exc:
                    return type(exc).__name__
                return f"complete {len(r.content)}"

            results = await asyncio.gather(*(fetch() for _ in range(5)))
            assert all(not r.startswith("complete 102400") for r in results), results
            assert connections == 1  # the 5 viewers shared one fill
            assert edge.edge.cache.get("/live/x/360p/1.m4s") is None
            await fetch()
            assert connections == 2  # retried, not served from a truncated cache entry
    finally:
        await edge.close()
        server.close()


async def test_a_refusing_owner_peer_does_not_black_hole_its_objects(tmp_path: Path) -> None:
    """The ring owner of an object answers 404 (a lying or lagging community node): the
    edge asks the origin and serves the object; a real 404 from the origin stays a 404."""
    asked: list[str] = []

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, liar: bool
    ) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = head.split(" ", 2)[1]
        if liar and path != "/healthz":
            asked.append(path)
        found = path == "/healthz" or (not liar and "/360p/9" not in path)
        body = f"bytes of {path}".encode() if found else b'{"error": "not found"}'
        status = "200 OK" if found else "404 Not Found"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            .encode() + body
        )  # fmt: skip
        await writer.drain()
        writer.close()

    origin_server = await asyncio.start_server(lambda r, w: answer(r, w, False), "127.0.0.1", 0)
    liar_server = await asyncio.start_server(lambda r, w: answer(r, w, True), "127.0.0.1", 0)
    origin = f"http://127.0.0.1:{origin_server.sockets[0].getsockname()[1]}"
    liar = f"http://127.0.0.1:{liar_server.sockets[0].getsockname()[1]}"
    config = EdgeConfig(origin=origin, port=free_port(), peers=(liar,), cache_dir=tmp_path)
    edge = EdgeService(replace(config, access_control=False))
    await edge.start()
    try:
        paths = [f"/live/x/360p/{n}.m4s" for n in range(40)]
        owned = [p for p in paths if edge.edge.ring.owner(p) == liar][:3]
        assert owned
        async with httpx.AsyncClient(timeout=10) as c:
            for path in owned:
                r = await c.get(f"{edge.url}{path}")
                assert r.status_code == 200 and r.content == f"bytes of {path}".encode()
            missing = next(  # the origin has no segment 9xx
                f"/live/x/360p/{n}.m4s"
                for n in range(900, 1000)
                if edge.edge.ring.owner(f"/live/x/360p/{n}.m4s") == liar
            )
            assert (await c.get(f"{edge.url}{missing}")).status_code == 404
        assert asked == [*owned, missing]  # the owner was asked first every time
        assert liar in edge.edge.ring.alive_peers()  # a refusal is not a dead peer
    finally:
        await edge.close()
        origin_server.close()
        liar_server.close()


async def test_a_stuck_viewer_does_not_hold_the_fill(mesh: Mesh, ffmpeg_cli: str) -> None:
    playlist = await published(mesh, ffmpeg_cli, "slow", 3.0)
    segment = re.findall(r"^(\d+\.m4s)$", playlist, re.M)[0]
    url = f"{mesh.edges[0].url}/live/slow/360p/{segment}"
    async with (
        httpx.AsyncClient(timeout=10) as stuck,
        httpx.AsyncClient(timeout=10) as c,
        stuck.stream("GET", url) as held,  # opens, never reads the body
    ):
        assert held.status_code == 200
        fast = await asyncio.wait_for(c.get(url), 5)
        assert fast.status_code == 200
        assert len(fast.content) == int(fast.headers["content-length"])


@pytest.mark.parametrize("policy", ["lru", "s3fifo", "sieve"])
async def test_simulator_and_live_edge_agree(tmp_path: Path, policy: str) -> None:
    """The same request sequence gives the same HIT/MISS sequence in `meshcast bench cache`'s
    simulator and in a real edge (both run the edge's Tier code with the same policy)."""
    from edge.simulate import simulate

    size = 1000
    writers: list[asyncio.StreamWriter] = []

    async def static_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: video/iso.segment\r\n"
                b"Cache-Control: public, max-age=31536000, immutable\r\n"
                + f"Content-Length: {size}\r\n\r\n".encode()
                + b"x" * size
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(static_origin, "127.0.0.1", 0)
    origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    edge = EdgeService(
        EdgeConfig(
            origin=origin,
            port=free_port(),
            cache_dir=tmp_path,
            cache_mem=5 * size,  # five objects; the largest cacheable object is 1/4 of it
            cache_policy=policy,
            access_control=False,  # a bare HTTP server, not a meshcast origin
        )
    )
    import random as _random

    rnd = _random.Random(policy)
    sequence = [rnd.choice("ABCDEFGHIJ") for _ in range(120)]
    await edge.start()
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            live = []
            for key in sequence:
                r = await c.get(f"{edge.url}/vod/t/360p/{ord(key)}.m4s")
                assert r.status_code == 200 and len(r.content) == size
                live.append(r.headers["x-cache"] == "HIT")
    finally:
        await edge.close()
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "ts,client,path,bytes\n"
        + "".join(f"{i},c,/vod/t/360p/{ord(k)}.m4s,{size}\n" for i, k in enumerate(sequence))
    )
    simulated: list[bool] = []
    simulate(trace, policy, 5 * size, simulated)
    assert live == simulated
    assert 0 < sum(live) < len(live)


async def test_model_trains_from_a_real_edge_access_log(mesh: Mesh, ffmpeg_cli: str) -> None:
    """The ML policy learns from what an edge wrote to its access log in this test."""
    from edge.ml_policy import DemandTracker
    from edge.simulate import read_trace

    key = mesh.origin.keys.create("learn")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(mesh.origin, key), 8.0)
    await wait_for_url(f"{mesh.origin.url}/live/learn/master.m3u8", 30)
    viewers = [
        run_tool("ffmpeg", "-v", "error", "-i", f"{e.url}/live/learn/master.m3u8",
                 "-map", "0", "-t", "4", "-f", "null", "-")
        for e in mesh.edges
    ]  # fmt: skip
    await asyncio.gather(*viewers)
    await asyncio.wait_for(proc.communicate(), 60)
    await asyncio.sleep(1.5)  # the access log flushes once a second
    log = mesh.edges[0].config.cache_dir / "access.csv"
    rows = list(read_trace(log))
    assert len(rows) > 20 and all(r.path.startswith("/live/learn/") for r in rows)
    tracker = DemandTracker(
        horizon_s=1.0,
        sample_every=1,
        retrain_every=len(rows),  # fit once, at the last row
        min_samples=10,
    )
    for row in rows:
        tracker.observe(row.path, row.size, row.ts)
    assert tracker.model is not None, "labels from a real log must contain both classes"
