"""The NATS event bus with a real nats-server (Debian) on loopback: events between
processes' buses, JetStream for durable types, edges that learn their ring from heartbeats,
and survival of a NATS restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from edge.cache import CachedObject
from edge.service import EdgeService
from meshcast import events
from meshcast.config import EdgeConfig, OriginConfig
from meshcast.nats_bus import JETSTREAM_NAME, NatsBus
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url, wait_for_state
from tests.e2e.test_ladder import run_tool, wait_for_url
from tests.e2e.test_rtmp_ingest import ffmpeg_push

pytestmark = pytest.mark.e2e


class Nats:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("nats-server")
        # `make test` installs Debian's nats-server: a missing one is a broken setup.
        assert binary, "nats-server not found: run `make test` (installs Debian's nats-server)"
        self.binary = binary
        self.port = free_port()
        self.store = tmp / "nats"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Nats]:
    server = Nats(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def eventually(check: object, within: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_events_cross_buses_and_durable_types_use_jetstream(nats_server: Nats) -> None:
    a, b = NatsBus(nats_server.url, "a"), NatsBus(nats_server.url, "b")
    await a.start()
    await b.start()
    try:
        await asyncio.wait_for(a.connected.wait(), 10)
        await asyncio.wait_for(b.connected.wait(), 10)
        with b.subscribe(["stream.published", "vod.ready"]) as sub, a.subscribe() as own:
            a.publish("stream.published", name="x", protocol="rtmp")
            a.publish("vod.ready", id="v1")
            first = await asyncio.wait_for(sub.get(), 5)
            second = await asyncio.wait_for(sub.get(), 5)
            assert (first.type, first.data["name"]) == ("stream.published", "x")
            assert (second.type, second.data["id"]) == ("vod.ready", "v1")
            # The publisher's own subscribers get each event once (no echo from NATS).
            await asyncio.sleep(0.3)
            assert own.queue.qsize() == 2
        assert a._js is not None
        info = await a._js.stream_info(JETSTREAM_NAME)
        assert info.state.messages == 1  # only the durable vod.* event was stored
    finally:
        await a.close()
        await b.close()


async def test_bus_down_at_start_then_delivers(tmp_path: Path) -> None:
    server = Nats(tmp_path)
    a, b = NatsBus(server.url, "a"), NatsBus(server.url, "b")
    await a.start()
    await b.start()
    try:
        a.publish("stream.published", name="early")  # queued: no server yet
        await asyncio.sleep(1.0)
        assert not a.connected.is_set()
        server.start()
        with b.subscribe(["stream.published"]) as sub:
            await asyncio.wait_for(b.connected.wait(), 15)
            await asyncio.wait_for(a.connected.wait(), 15)
            a.publish("stream.published", name="late")
            names = set()
            while "late" not in names:
                names.add((await asyncio.wait_for(sub.get(), 10)).data["name"])
    finally:
        await a.close()
        await b.close()
        server.stop()


@pytest.fixture
async def bus_mesh(tmp_path: Path, nats_server: Nats) -> AsyncIterator[list[EdgeService]]:
    edges: list[EdgeService] = []
    yield edges
    for edge in edges:
        await edge.close()


def bus_edge(tmp_path: Path, nats: Nats, origin: str) -> EdgeService:
    port = free_port()
    return EdgeService(
        EdgeConfig(
            origin=origin, port=port, cache_dir=tmp_path / f"e{port}", bus=nats.url, heartbeat=0.3
        )
    )


async def test_edges_learn_the_ring_and_streams_from_the_bus(
    tmp_path: Path, nats_server: Nats, bus_mesh: list[EdgeService]
) -> None:
    origin = OriginService(
        OriginConfig(
            data_dir=tmp_path / "origin", http_port=free_port(), rtmp_port=0, bus=nats_server.url
        )
    )
    await origin.start()
    try:
        for _ in range(2):
            bus_mesh.append(bus_edge(tmp_path, nats_server, origin.url))
            await bus_mesh[-1].start()
        e1, e2 = bus_mesh
        # No --peer given: the ring comes from heartbeats.
        await eventually(lambda: e1.edge.ring.alive_peers() == [e2.edge.self_url])
        await eventually(lambda: e2.edge.ring.alive_peers() == [e1.edge.self_url])
        # Stream events from the origin reach the edges and drop their cached playlists.
        e1.edge.cache.put(_manifest("/live/s/360p/index.m3u8"))
        assert origin.bus is not None
        await asyncio.wait_for(origin.bus.connected.wait(), 10)  # type: ignore[attr-defined]
        origin.bus.publish(events.STREAM_ENDED, name="s", reason="test")
        await eventually(lambda: e1.edge.cache.peek("/live/s/360p/index.m3u8") is None)
        # A NATS restart: edges reconnect and a new edge still joins without restarts.
        nats_server.stop()
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{e1.url}/healthz")).status_code == 200
        nats_server.start()
        bus_mesh.append(bus_edge(tmp_path, nats_server, origin.url))
        await bus_mesh[-1].start()
        e3 = bus_mesh[-1]
        await eventually(lambda: e3.edge.self_url in e1.edge.ring.alive_peers(), 30)
        await eventually(lambda: e3.edge.self_url in e2.edge.ring.alive_peers(), 30)
        await eventually(lambda: len(e3.edge.ring.alive_peers()) == 2, 30)
        # A clean shutdown leaves the ring at once (node.left), not after the silence.
        await e3.close()
        bus_mesh.remove(e3)
        await eventually(lambda: e3.edge.self_url not in e1.edge.ring.peers, 5)
    finally:
        await origin.close()


def _manifest(key: str) -> CachedObject:
    return CachedObject(key, 10, "application/vnd.apple.mpegurl", None, None, time.time(),
                        time.time() + 60, body=b"#EXTM3U\n\n")  # fmt: skip


async def test_streams_are_transcoded_on_a_remote_transcoder_node(
    tmp_path: Path, nats_server: Nats, ffmpeg_cli: str
) -> None:
    """`meshcast transcoder` as its own process: the origin finds it on the bus, streams
    the ingest to it over TCP, and the node writes the ladder into the shared store."""
    data = tmp_path / "shared"
    origin = OriginService(
        OriginConfig(
            data_dir=data, http_port=free_port(), rtmp_port=0, bus=nats_server.url,
            transcoders="remote", transcoder_secret="s3cret",
        )
    )  # fmt: skip
    await origin.start()
    http_port = free_port()
    with (tmp_path / "node.log").open("wb") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "meshcast.cli", "transcoder", "--bus", nats_server.url,
             "--data", str(data), "--port", str(free_port()), "--http-port", str(http_port),
             "--secret", "s3cret", "--ladder", "360:600"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        key = origin.keys.create("far")
        # No node yet: "remote" refuses the publisher instead of transcoding locally.
        early = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 2.0)
        await asyncio.wait_for(early.communicate(), 30)
        assert early.returncode != 0
        await eventually(lambda: origin.transcoders.alive(), 30)
        proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 5.0)
        await wait_for_state(origin, "far", "live")
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://127.0.0.1:{http_port}/healthz")).json()
        assert health["role"] == "transcoder" and health["bus_connected"]
        await asyncio.wait_for(proc.communicate(), 60)
        await wait_for_state(origin, "far", "ended")
        playlist = await wait_for_url(f"{origin.url}/live/far/360p/index.m3u8", 30, "ENDLIST")
        assert "#EXTINF" in playlist.text
        code, out, err = await run_tool(
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries", "stream=nb_read_frames,height", "-of", "json",
            f"{origin.url}/live/far/master.m3u8",
        )  # fmt: skip
        assert code == 0, err
        stream = json.loads(out)["streams"][0]
        assert stream["height"] == 360 and int(stream["nb_read_frames"]) >= 100  # 5 s x 25
        # The segments were written by the node's worker, not the origin's.
        assert not origin._workers
    finally:
        node.terminate()
        node.wait(20)
        await origin.close()
