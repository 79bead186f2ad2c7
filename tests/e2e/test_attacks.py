"""Issue 20's attacks, each run (bounded) against a real ``meshcast up --edges 2 --plugin
storage --network`` process while a legitimate publisher (ffmpeg over RTMP) streams and a
viewer plays through an edge. For every attack: the attacker gets a clear 4xx or a closed
connection; ``/healthz`` of the origin and both edges answers within 500 ms throughout
(polled every 100 ms from another thread); the process's RSS grows by less than
``RSS_BOUND``; and the publisher, a viewer (and, for VOD, an uploader) are unaffected.

Attackers use their own loopback addresses (127.0.0.3, …) where per-address budgets are
the point; the legitimate clients use 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config as BotoConfig

from meshcast.tus import encode_metadata
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

MESHCAST = [sys.executable, "-m", "meshcast.cli"]
# The stated memory bound: what the meshcast process may grow by during one attack.
RSS_BOUND = 64 * 1024 * 1024
HEALTH_DEADLINE_S = 0.5
ATTACKER = "127.0.0.3"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (its worker processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@dataclass
class Cluster:
    proc: subprocess.Popen[str]
    data: Path
    http_port: int
    rtmp_port: int
    stream_key: str
    api_key: str
    s3: tuple[str, str]
    publisher: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)
    drain: threading.Thread | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def edges(self) -> list[str]:
        return [f"http://127.0.0.1:{self.http_port + i}" for i in (1, 2)]

    @property
    def roles(self) -> list[str]:
        return [self.origin, *self.edges]


def cli(*args: str) -> str:
    done = subprocess.run([*MESHCAST, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def publish(cluster: Cluster, key: str, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ffmpeg", "-v", "error", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
            "-tune", "zerolatency", "-g", "30", "-c:a", "aac",
            "-f", "flv", f"rtmp://127.0.0.1:{cluster.rtmp_port}/live/{key}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_until(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {within:.0f} s"
        time.sleep(0.2)


def stream_state(cluster: Cluster, name: str, key: str | None = None) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.get(f"{cluster.origin}/api/streams/{name}", headers=headers, timeout=5)
    return r.json() if r.status_code == 200 else None


def viewer_plays(cluster: Cluster) -> bool:
    """A viewer on edge 1: the 240p playlist and its newest segment."""
    base = f"{cluster.edges[0]}/live/cam/240p"
    playlist = httpx.get(f"{base}/index.m3u8", timeout=5)
    if playlist.status_code != 200:
        return False
    segments = [ln for ln in playlist.text.splitlines() if ln.endswith(".m4s")]
    return bool(segments) and httpx.get(f"{base}/{segments[-1]}", timeout=5).status_code == 200


def free_run(n: int) -> int:
    """The first of ``n`` consecutive free ports (``up`` puts edges on http-port+1…)."""
    for _ in range(100):
        first = free_port()
        try:
            with contextlib.ExitStack() as stack:
                for port in range(first, first + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise AssertionError(f"no {n} consecutive free ports")


def start_cluster(data: Path, edges: int = 2, extra: tuple[str, ...] = ()) -> Cluster:
    stream_key = cli("keys", "create", "cam", "--data", str(data))
    api_key = cli("keys", "create", "cam", "--kind", "api", "--data", str(data))
    akid, secret = cli("keys", "create", "bucketeer", "--kind", "s3", "--data", str(data)).split()
    http_port, rtmp_port = free_run(1 + edges), free_port()
    proc = subprocess.Popen(
        [*MESHCAST, "up", "--data", str(data), "--http-port", str(http_port),
         "--rtmp-port", str(rtmp_port), "--edges", str(edges), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    cluster = Cluster(proc, data, http_port, rtmp_port, stream_key, api_key, (akid, secret))
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        cluster.log.append(line.rstrip())
        if line.strip() == "ready":
            break
    assert cluster.log and cluster.log[-1] == "ready", "\n".join(cluster.log[-30:])
    # Keep draining its output, or a full pipe would block the process.
    out = proc.stdout
    cluster.drain = threading.Thread(target=lambda: cluster.log.extend(out), daemon=True)
    cluster.drain.start()
    return cluster


def reap(cluster: Cluster) -> None:
    """After the process exited: its output read to the end, the pipe closed."""
    if cluster.drain is not None:
        cluster.drain.join(10)
    if cluster.proc.stdout is not None:
        cluster.proc.stdout.close()


def stop_cluster(cluster: Cluster) -> None:
    if cluster.publisher is not None:
        cluster.publisher.kill()
        cluster.publisher.wait()
    cluster.proc.send_signal(signal.SIGTERM)
    try:
        cluster.proc.wait(30)
    except subprocess.TimeoutExpired:
        cluster.proc.kill()
        cluster.proc.wait()
        raise AssertionError("meshcast did not stop within 30 s of SIGTERM") from None
    finally:
        reap(cluster)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data = tmp_path_factory.mktemp("attacks")
    c = start_cluster(data, 2, ("--plugin", "storage", "--network"))
    try:
        c.publisher = publish(c, c.stream_key, 900)
        wait_until(lambda: (stream_state(c, "cam") or {}).get("state") == "live", 30, "live")
        wait_until(lambda: viewer_plays(c), 60, "the viewer plays through edge 1")
        yield c
    finally:
        stop_cluster(c)


class Watch(threading.Thread):
    """Polls every role's /healthz every 100 ms and samples the process's RSS."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.rss_start = rss(cluster.proc.pid)
        self.rss_max = self.rss_start

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                for role in self.cluster.roles:
                    started = time.monotonic()
                    try:
                        status = client.get(f"{role}/healthz").status_code
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{role}: {exc!r}")
                        continue
                    self.latencies.append(time.monotonic() - started)
                    if status != 200:
                        self.failures.append(f"{role}: {status}")
                self.rss_max = max(self.rss_max, rss(self.cluster.proc.pid))
                self.stop.wait(0.1)


@contextlib.contextmanager
def under_attack(cluster: Cluster) -> Iterator[Watch]:
    """Health and memory watched from before the attack until a second after it."""
    watch = Watch(cluster)
    watch.start()
    wait_until(lambda: len(watch.latencies) >= len(cluster.roles), 10, "first health poll")
    try:
        yield watch
    finally:
        time.sleep(1.0)  # the aftermath counts too
        watch.stop.set()
        watch.join()
    assert not watch.failures, watch.failures[:5]
    assert watch.latencies and max(watch.latencies) < HEALTH_DEADLINE_S, max(watch.latencies)
    grew = watch.rss_max - watch.rss_start
    assert grew < RSS_BOUND, f"RSS grew by {grew / 2**20:.0f} MiB"
    # The legitimate publisher and viewer did not notice.
    assert (stream_state(cluster, "cam") or {}).get("state") == "live"
    assert viewer_plays(cluster)


async def read_response(reader: asyncio.StreamReader, wait: float) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await asyncio.wait_for(reader.readexactly(length), 5)


async def raw_request(
    url: str, head: bytes, body_chunks: int = 0, local: str = "127.0.0.1"
) -> tuple[int, dict[str, Any] | None]:
    """Send ``head`` (then up to ``body_chunks`` x 64 KiB of body while no answer came);
    the status and JSON body of the answer, or (0, None) when the server closed."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(local, 0))
    answer: tuple[int, bytes] | None = None
    try:
        writer.write(head)
        # A limit checked on the head answers before any body is sent.
        with contextlib.suppress(TimeoutError):
            answer = await read_response(reader, 0.5)
        for _ in range(body_chunks if answer is None else 0):
            writer.write(b"x" * 65536)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                answer = await read_response(reader, 0.05)
                break
        if answer is None:
            answer = await read_response(reader, 15)
    except (ConnectionError, asyncio.IncompleteReadError):
        return 0, None
    finally:
        writer.close()
    status, body = answer
    with contextlib.suppress(ValueError):
        return status, json.loads(body)
    return status, None


# ---- 1: bodies ---------------------------------------------------------------------------


async def test_1_bodies_are_bounded_before_they_are_read(cluster: Cluster) -> None:
    big = 64 * 1024 * 1024

    async def slow_beacon() -> tuple[float, int]:
        """A beacon body dribbled a byte a second: cut at the 10 s read deadline."""
        host, port = cluster.origin.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /api/beacons HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        started = time.monotonic()
        try:
            for _ in range(40):
                writer.write(b" ")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(4096), 1.0)
                    return time.monotonic() - started, int(answer.split(b" ", 2)[1])
        except ConnectionError:
            pass
        finally:
            writer.close()
        return time.monotonic() - started, 0

    with under_attack(cluster):
        slow = asyncio.create_task(slow_beacon())
        head = (
            f"POST /api/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {big}\r\n\r\n"
        ).encode()
        # Every role, JSON APIs and routes that take no body at all: 413 on the header.
        targets = [
            (cluster.origin, "POST", "/api/nodes"),
            (cluster.origin, "POST", "/api/tokens"),
            (cluster.origin, "POST", "/whip/cam"),
            (cluster.edges[0], "POST", "/_storage/missing"),
            (cluster.edges[1], "POST", "/healthz"),
        ]
        for role, method, path in targets:
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {big}\r\n\r\n"
            ).encode()
            status, body = await raw_request(role, head, body_chunks=16)
            assert status == 413 and body is not None, (role, path, status)
            assert "larger than" in body["error"]
        # Chunked (no length to check first): cut once the count passes the limit.
        head = (
            b"POST /api/nodes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        host, port = cluster.origin.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(head)
        answer = b""
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):  # up to 64 MiB
                writer.write(b"10000\r\n" + b" " * 65536 + b"\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    answer = await asyncio.wait_for(reader.read(4096), 0.005)
                    if answer:
                        break
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
        took, status = await slow
        assert status == 408 and took < 14, (took, status)
    # A legitimate API call with a body still works.
    r = httpx.post(
        f"{cluster.origin}/api/products",
        json={
            "kind": "tvod",
            "name": "pass",
            "price_cents": 100,
            "duration_s": 3600,
            "scopes": ["live/cam"],
        },
        headers={"Authorization": f"Bearer {cluster.api_key}"},
    )
    assert r.status_code == 201, r.text


# ---- 2: RTMP -----------------------------------------------------------------------------


async def rtmp_null_flood(port: int, size: int = 8 << 20) -> float:
    """Handshake, then a data message of ``size`` NULL markers; seconds until closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
    writer.write(b"\x03" + bytes(1536))
    s0s1s2 = await reader.readexactly(1 + 2 * 1536)
    writer.write(s0s1s2[1:1537])  # C2 echoes S1
    started = time.monotonic()
    header = bytes([0x04]) + bytes(3) + size.to_bytes(3, "big") + b"\x12" + bytes(4)
    payload = bytearray(header)
    sent = 0
    try:
        while sent < size:
            piece = min(128, size - sent)
            payload += b"\x05" * piece
            sent += piece
            if sent < size:
                payload += b"\xc4"
            if len(payload) >= 1 << 16:
                writer.write(bytes(payload))
                payload.clear()
                await writer.drain()
            if reader.at_eof():
                break
        writer.write(bytes(payload))
        await writer.drain()
        await asyncio.wait_for(reader.read(), 10)
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
    return time.monotonic() - started


async def test_2_rtmp_before_publish_is_bounded(cluster: Cluster) -> None:
    with under_attack(cluster):
        took = await asyncio.gather(*(rtmp_null_flood(cluster.rtmp_port) for _ in range(4)))
        assert max(took) < 5, took
    metrics = httpx.get(f"{cluster.origin}/metrics").text
    assert 'meshcast_rtmp_rejected_total{reason="protocol"}' in metrics


# ---- 3: long-lived responses -------------------------------------------------------------


async def test_3_event_stream_flood_from_one_address(cluster: Cluster) -> None:
    held: list[asyncio.StreamWriter] = []

    async def open_events() -> int:
        host, port = cluster.origin.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), local_addr=(ATTACKER, 0))
        held.append(writer)
        try:
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), 20)
        except ConnectionError:
            return 0  # closed at accept: over the address's connection limit
        return int(line.split(b" ", 2)[1]) if line else 0

    with under_attack(cluster):
        statuses = await asyncio.gather(*(open_events() for _ in range(1020)))
        try:
            counts = {s: statuses.count(s) for s in set(statuses)}
            # 8 event streams; 429 for the rest up to 512 connections; closed beyond.
            assert counts[200] == 8 and set(counts) == {200, 429, 0}, counts
            assert counts[0] >= 1020 - 512, counts
            async with httpx.AsyncClient(timeout=5) as c:
                # Everyone else: the key set, the stream list, and an event stream of their own.
                assert (await c.get(f"{cluster.origin}/api/tokens/keys")).status_code == 200
                assert (await c.get(f"{cluster.origin}/api/streams")).status_code == 200
                async with c.stream("GET", f"{cluster.origin}/api/events") as events:
                    assert events.status_code == 200
        finally:
            for writer in held:
                writer.close()


async def test_3_global_cap_keeps_health_and_media_answering(cluster: Cluster) -> None:
    """1100 idle connections from five addresses (each under its own cap) fill the
    connection limit: /healthz and media still answer from the reserve, the rest 503."""
    held = []
    host, port = cluster.origin.removeprefix("http://").split(":")
    for i in range(1100):
        s = socket.socket()
        s.bind((f"127.0.0.{4 + i % 5}", 0))
        s.connect((host, int(port)))
        held.append(s)
    try:
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=5) as c:
            assert (await c.get(f"{cluster.origin}/healthz")).status_code == 200
            media = await c.get(f"{cluster.origin}/live/cam/240p/index.m3u8")
            assert media.status_code == 200
            assert (await c.get(f"{cluster.origin}/api/streams")).status_code == 503
    finally:
        for s in held:
            s.close()
    await asyncio.sleep(0.5)
    assert httpx.get(f"{cluster.origin}/api/streams").status_code == 200


# ---- 4: S3 -------------------------------------------------------------------------------


def s3_client(cluster: Cluster, region: str = "us-east-1", version: str = "s3v4") -> Any:
    akid, secret = cluster.s3
    return boto3.client(
        "s3",
        endpoint_url=f"{cluster.edges[0]}/s3",
        aws_access_key_id=akid,
        aws_secret_access_key=secret,
        region_name=region,
        config=BotoConfig(signature_version=version, s3={"addressing_style": "path"}),
    )


def test_4_s3_unsigned_amz_headers_and_wrong_region(cluster: Cluster) -> None:
    s3 = s3_client(cluster)
    s3.create_bucket(Bucket="site")
    s3.put_object(Bucket="site", Key="secrets/db-password.txt", Body=b"hunter2")
    for version in ("s3v4", "s3"):  # SigV4 and the SigV2 URLs boto3 still makes
        url = s3_client(cluster, version=version).generate_presigned_url(
            "put_object", Params={"Bucket": "site", "Key": "uploads/avatar.png"}, ExpiresIn=60
        )
        r = httpx.put(
            url, content=b"", headers={"x-amz-copy-source": "/site/secrets/db-password.txt"}
        )
        assert r.status_code == 403, r.text
        assert b"<Code>AccessDenied</Code>" in r.content or b"SignatureDoesNotMatch" in r.content
        ok = httpx.put(url, content=b"\x89PNG")  # the URL as its owner meant it
        assert ok.status_code == 200, ok.text
    assert s3.get_object(Bucket="site", Key="uploads/avatar.png")["Body"].read() == b"\x89PNG"
    wrong = s3_client(cluster, region="eu-west-3")
    with pytest.raises(Exception, match="AuthorizationHeaderMalformed"):
        wrong.get_object(Bucket="site", Key="uploads/avatar.png")


# ---- 5: VOD ------------------------------------------------------------------------------


def ffmpeg_file(path: Path, *args: str) -> bytes:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args, str(path)], check=True, timeout=120)
    return path.read_bytes()


def tus_upload(cluster: Cluster, data: bytes, key: str | None = None) -> tuple[str, httpx.Response]:
    headers = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {key or cluster.api_key}"}
    created = httpx.post(
        f"{cluster.origin}/api/vod",
        headers={
            **headers,
            "Upload-Length": str(len(data)),
            "Upload-Metadata": encode_metadata({"filename": b"x.mp4"}),
        },
    )
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    patch = httpx.patch(
        location,
        content=data,
        timeout=120,
        headers={
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    return location.rsplit("/", 2)[-2], patch


def job(cluster: Cluster, asset: str) -> dict[str, Any]:
    r = httpx.get(f"{cluster.origin}/api/vod/{asset}")
    return r.json() if r.status_code == 200 else {"state": "gone", "status": r.status_code}


def test_5_vod_uploads_over_the_limits_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    huge = ffmpeg_file(
        tmp_path / "huge.mov",
        *("-f", "lavfi", "-i", "color=size=8192x4320:rate=60", "-frames:v", "3"),
        *("-c:v", "mjpeg", "-pix_fmt", "yuvj420p"),
    )
    sparse = ffmpeg_file(  # 3 frames whose timestamps span an hour, declared 60 fps
        tmp_path / "sparse.mkv",
        *("-f", "lavfi", "-i", "testsrc=size=320x240:rate=60", "-frames:v", "3"),
        *("-vf", "setpts=N*1800/TB", "-fps_mode", "passthrough"),
        *("-c:v", "libx264", "-preset", "ultrafast"),
    )
    legit = ffmpeg_file(
        tmp_path / "legit.mp4",
        *("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "2"),
        *("-c:v", "libx264", "-preset", "ultrafast"),
    )
    with under_attack(cluster):
        asset, patch = tus_upload(cluster, huge)
        assert patch.status_code == 422, patch.text
        assert "8192x4320 is larger than the 4096x4096 limit" in patch.json()["error"]
        assert job(cluster, asset)["state"] == "failed"
        asset2, patch = tus_upload(cluster, sparse)
        assert patch.status_code == 422, patch.text
        assert "span 3600.0 s but it has only 3 frames" in patch.json()["error"]
        # An uploader at the same time: unaffected.
        mine, patch = tus_upload(cluster, legit)
        assert patch.status_code == 204, patch.text
        done = wait_until(lambda: job(cluster, mine)["state"] in ("ready", "failed"), 120, "vod")
        assert done and job(cluster, mine)["state"] == "ready", job(cluster, mine)
    assert {job(cluster, a)["state"] for a in (asset, asset2)} == {"failed"}


# ---- 6 and 7: privacy and lockouts -------------------------------------------------------


async def test_6_7_publisher_addresses_stay_private_and_bad_keys_lock_no_one_out(
    cluster: Cluster,
) -> None:
    public = httpx.get(f"{cluster.origin}/api/streams").json()["streams"]
    assert public and all("remote" not in s for s in public)
    owner = stream_state(cluster, "cam", cluster.api_key)
    assert owner is not None and owner["remote"].startswith("127.0.0.1:")
    # Nine (and more) bad keys from the publisher's own address ...
    async with httpx.AsyncClient(base_url=cluster.origin) as c:
        for i in range(12):
            bad = f"api_{i:012x}_{'0' * 64}"
            r = await c.get("/api/products", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code in (401, 429)
        assert r.status_code == 429
        # ... and still: a valid API key works, and a valid RTMP publish goes live.
        ok = await c.get("/api/products", headers={"Authorization": f"Bearer {cluster.api_key}"})
        assert ok.status_code == 200
        second = cli("keys", "create", "cam2", "--data", str(cluster.data))
        seen: list[dict[str, Any]] = []

        async def read_events() -> None:
            async with c.stream("GET", "/api/events", timeout=30) as events:
                async for line in events.aiter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if seen[-1]["type"] == "stream.published":
                            return

        listener = asyncio.create_task(read_events())
        await asyncio.sleep(0.5)
        proc = publish(cluster, second, 4)
        try:
            await asyncio.wait_for(listener, 30)
        finally:
            proc.kill()
            proc.wait()
    published = seen[-1]["data"]
    assert published["name"] == "cam2" and "remote" not in published


# ---- 8: workers die with their parent ----------------------------------------------------


def test_8_workers_die_with_a_killed_main_process(tmp_path: Path) -> None:
    c = start_cluster(tmp_path, 1)
    try:
        c.publisher = publish(c, c.stream_key, 60)
        wait_until(lambda: (stream_state(c, "cam") or {}).get("state") == "live", 30, "live")
        clip = ffmpeg_file(
            tmp_path / "clip.mp4",
            *("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-t", "20"),
            *("-c:v", "libx264", "-preset", "ultrafast"),
        )
        asset, patch = tus_upload(c, clip)
        assert patch.status_code == 204
        wait_until(lambda: job(c, asset)["state"] == "transcoding", 60, "transcoding")
        workers = wait_until(
            lambda: children(c.proc.pid) if len(children(c.proc.pid)) >= 3 else None, 30, "workers"
        )
        os.kill(c.proc.pid, signal.SIGKILL)
        c.proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(p) for p in workers):
            time.sleep(0.2)
        survivors = [p for p in workers if alive(p)]
        for pid in survivors:  # they hold the output pipe: end them before reaping it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not survivors, "workers outlived the main process"
    finally:
        if c.publisher is not None:
            c.publisher.kill()
            c.publisher.wait()
        with contextlib.suppress(ProcessLookupError):
            c.proc.kill()
        c.proc.wait()
        reap(c)


# ---- 9: request heads --------------------------------------------------------------------


async def test_9_request_heads_over_the_limits_get_431(cluster: Cluster) -> None:
    with under_attack(cluster):
        for role in cluster.roles:
            big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
            status, body = await raw_request(role, big)  # attack 9: a 70 kB header
            assert status == 431 and body is not None, role
            assert body["error"] == "request head larger than 32768 bytes"
            line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
            status, body = await raw_request(role, line)
            assert status == 431 and body is not None
            assert body["error"] == "header line longer than 8192 bytes"
            many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            many += b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n"
            status, body = await raw_request(role, many)
            assert status == 431 and body is not None and "header fields" in body["error"]
            long_url = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            status, _ = await raw_request(role, long_url)
            assert status == 414
            lines = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            lines += b"".join(b"X-%d: %s\r\n" % (i, b"b" * 4000) for i in range(12)) + b"\r\n"
            status, body = await raw_request(role, lines)
            assert status == 431 and body is not None and "request head" in body["error"]
            assert httpx.get(f"{role}/healthz").status_code == 200
