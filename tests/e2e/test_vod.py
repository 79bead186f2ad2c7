"""VOD end to end: real media from the ffmpeg CLI, uploads with httpx / raw sockets /
`meshcast vod add`, output read back by libavformat (PyAV) and ffprobe, also through an
edge."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import itertools
import json
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from edge.service import EdgeService
from meshcast.config import EdgeConfig, OriginConfig, TranscodeConfig, VodConfig
from meshcast.tus import encode_metadata
from origin.service import OriginService
from tests.conftest import free_port
from tests.e2e.test_ladder import run_tool

pytestmark = pytest.mark.e2e

SMALL_LADDER = ((360, 800), (240, 400))
TUS = {"Tus-Resumable": "1.0.0"}


def origin_config(data: Path, **vod: Any) -> OriginConfig:
    return OriginConfig(
        data_dir=data,
        http_port=free_port(),
        rtmp_port=0,
        transcode=TranscodeConfig(ladder=SMALL_LADDER, encoder="x264"),
        vod=VodConfig(**vod),
    )


@pytest.fixture
async def small_origin(tmp_path: Path) -> AsyncIterator[OriginService]:
    service = OriginService(origin_config(tmp_path / "origin"))
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def ffmpeg(*args: str) -> None:
    # Not run_tool: its 120 s limit is too short for 30 s of 1080p on a busy 2-core box.
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-y", *args, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 400)
    assert proc.returncode == 0, err.decode()


async def make_clip(
    path: Path, seconds: float = 2, size: str = "320x240", rate: int = 30, *extra: str
) -> Path:
    await ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}"),
        *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"),
        *("-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"),
        *extra,
        str(path),
    )
    return path


def auth(key: str) -> dict[str, str]:
    return {**TUS, "Authorization": f"Bearer {key}"}


async def tus_create(client: httpx.AsyncClient, origin: str, key: str, length: int) -> str:
    response = await client.post(
        f"{origin}/api/vod",
        headers={
            **auth(key),
            "Upload-Length": str(length),
            "Upload-Metadata": encode_metadata({"filename": b"clip.mp4"}),
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["tus-resumable"] == "1.0.0"
    return response.headers["location"]


async def tus_patch(
    client: httpx.AsyncClient, location: str, key: str, offset: int, data: bytes
) -> httpx.Response:
    headers = {
        **auth(key),
        "Upload-Offset": str(offset),
        "Content-Type": "application/offset+octet-stream",
    }
    return await client.patch(location, headers=headers, content=data)


async def upload(origin: OriginService, key: str, data: bytes) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        location = await tus_create(client, origin.url, key, len(data))
        offset = 0
        while offset < len(data):
            piece = data[offset : offset + 256 * 1024]
            response = await tus_patch(client, location, key, offset, piece)
            assert response.status_code == 204, response.text
            offset = int(response.headers["upload-offset"])
    return location.rsplit("/", 2)[-2]


async def wait_job(
    origin: OriginService, asset: str, states: tuple[str, ...] = ("ready", "failed"), within=60.0
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient() as client:
        while True:
            job: dict[str, Any] = (await client.get(f"{origin.url}/api/vod/{asset}")).json()
            if job["state"] in states:
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {asset} not {states} within {within} s: {job}")
            await asyncio.sleep(0.05)


@dataclasses.dataclass
class StreamReport:
    kind: str
    width: int
    height: int
    packets: int
    keyframes: list[float]
    start: float
    end: float  # last pts + its duration, seconds
    monotonic: bool


def read_packets(url: str) -> list[StreamReport]:
    """Demux every stream of an HLS/DASH presentation with libavformat."""
    with av.open(url, timeout=20) as container:
        streams = list(container.streams)
        last: dict[int, int] = {}
        report = {
            s.index: StreamReport(
                s.type,
                getattr(s.codec_context, "width", 0),
                getattr(s.codec_context, "height", 0),
                0,
                [],
                float("inf"),
                0.0,
                True,
            )
            for s in streams
        }
        for packet in container.demux():
            if packet.pts is None or packet.dts is None:
                continue
            r = report[packet.stream.index]
            tb = packet.time_base
            if packet.stream.index in last and packet.dts <= last[packet.stream.index]:
                r.monotonic = False
            last[packet.stream.index] = packet.dts
            r.packets += 1
            r.start = min(r.start, float(packet.pts * tb))
            r.end = max(r.end, float((packet.pts + packet.duration) * tb))
            if packet.is_keyframe and r.kind == "video":
                r.keyframes.append(round(float(packet.pts * tb), 3))
    return list(report.values())


def decode_lowest_rung(url: str) -> tuple[int, bool]:
    """Decode every frame of the smallest video rung: (frames, pts strictly increasing)."""
    with av.open(url, timeout=20) as container:
        video = min(container.streams.video, key=lambda s: s.codec_context.height)
        frames, last, monotonic = 0, -1, True
        for frame in container.decode(video):
            if frame.pts is not None:
                monotonic &= frame.pts > last
                last = frame.pts
            frames += 1
    return frames, monotonic


def first_frame_luma(url: str) -> Any:
    with av.open(url, timeout=20) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="gray")


def video_pix_fmt(url: str) -> str:
    with av.open(url, timeout=20) as container:
        return str(container.streams.video[0].codec_context.pix_fmt)


async def ffprobe_packets(url: str) -> tuple[list[StreamReport], tuple[int, bool]]:
    """The same report from the ffmpeg CLI's libavformat (PyAV's build has no DASH
    demuxer), plus every decoded frame of the smallest rung: (frames, pts increasing)."""
    rc, out, err = await run_tool(
        "ffprobe", "-v", "error", "-show_entries",
        "stream=index,codec_type,width,height:packet=stream_index,pts_time,dts_time,"
        "duration_time,flags", "-of", "json", url,
    )  # fmt: skip
    assert rc == 0, err
    probe = json.loads(out)
    report = {
        s["index"]: StreamReport(
            s["codec_type"], s.get("width", 0), s.get("height", 0), 0, [], float("inf"), 0.0, True
        )
        for s in probe["streams"]
    }
    last: dict[int, float] = {}
    for packet in probe["packets"]:
        r = report[packet["stream_index"]]
        pts, dts = float(packet["pts_time"]), float(packet["dts_time"])
        if packet["stream_index"] in last and dts <= last[packet["stream_index"]]:
            r.monotonic = False
        last[packet["stream_index"]] = dts
        r.packets += 1
        r.start = min(r.start, pts)
        r.end = max(r.end, pts + float(packet.get("duration_time", 0)))
        if "K" in packet["flags"] and r.kind == "video":
            r.keyframes.append(round(pts, 3))
    smallest = min(
        (i for i, r in report.items() if r.kind == "video"), key=lambda i: report[i].height
    )
    rc, out, err = await run_tool(
        "ffprobe", "-v", "error", "-select_streams", str(smallest), "-show_entries",
        "frame=pts_time", "-of", "csv=p=0", url,
    )  # fmt: skip
    assert rc == 0, err
    times = [float(line.split(",")[0]) for line in out.split()]
    increasing = all(b > a for a, b in itertools.pairwise(times))
    return list(report.values()), (len(times), increasing)


async def source_duration(path: Path) -> float:
    rc, out, err = await run_tool(
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
        "-show_entries", "stream=nb_read_frames,r_frame_rate", "-of", "json", str(path),
    )  # fmt: skip
    assert rc == 0, err
    stream = json.loads(out)["streams"][0]
    return int(stream["nb_read_frames"]) / float(Fraction(stream["r_frame_rate"]))


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshcast.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 400)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---- acceptance: 30 s of 1080p, default ladder, through an edge ---------------------


@pytest.mark.timeout(600)
async def test_30s_1080p_upload_transcode_and_play_through_an_edge(tmp_path: Path) -> None:
    source = await make_clip(
        tmp_path / "src.mp4",
        30,
        "1920x1080",
        30,
        "-g",
        "75",  # keyframes off our 2 s grid
    )
    config = dataclasses.replace(
        origin_config(tmp_path / "origin"), transcode=TranscodeConfig(encoder="x264")
    )
    origin = OriginService(config)
    await origin.start()
    edge = EdgeService(EdgeConfig(origin=origin.url, port=free_port(), cache_dir=tmp_path / "edge"))
    await edge.start()
    try:
        key = origin.keys.create("creator")
        rc, out, err = await run_cli(
            "vod", "add", str(source), "--origin", origin.url, "--key", key,
            env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
        )  # fmt: skip
        assert rc == 0, err
        asset = out.split()[0]
        assert f"/vod/{asset}/master.m3u8" in out and f"/player/?vod={asset}" in out
        assert "upload" in err and "100.0%" in err and "MiB/s" in err and "ETA" in err
        assert "transcode" in err and "ready" in err

        job = await wait_job(origin, asset, ("ready",))
        assert job["renditions"] == ["1080p", "720p", "480p", "360p", "audio"]
        assert job["progress"] == 100.0 and job["error"] is None
        expected = await source_duration(source)
        assert abs(job["duration"] - expected) <= 1 / 30

        async with httpx.AsyncClient(base_url=f"{edge.url}/vod/{asset}") as client:
            master = (await client.get("/master.m3u8")).text
            playlist = (await client.get("/360p/index.m3u8")).text
            mpd = (await client.get("/manifest.mpd")).text
        assert "RESOLUTION=1920x1080" in master and "FRAME-RATE=30.000" in master
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and "#EXT-X-ENDLIST" in playlist
        assert 'type="static"' in mpd and 'mediaPresentationDuration="PT30.000S"' in mpd

        for manifest in ("master.m3u8", "manifest.mpd"):
            url = f"{edge.url}/vod/{asset}/{manifest}"
            if manifest == "master.m3u8":  # PyAV (libavformat 62) for HLS
                streams = await asyncio.to_thread(read_packets, url)
                frames, monotonic = await asyncio.to_thread(decode_lowest_rung, url)
            else:  # ffprobe (libavformat 59, with libxml2) for DASH
                streams, (frames, monotonic) = await ffprobe_packets(url)
            videos = [s for s in streams if s.kind == "video"]
            assert sorted((s.width, s.height) for s in videos) == [
                (640, 360), (854, 480), (1280, 720), (1920, 1080),
            ], manifest  # fmt: skip
            grid = [float(t) for t in range(0, 30, 2)]
            for s in videos:
                assert s.monotonic, (manifest, s)
                assert s.packets == 900, (manifest, s)
                assert abs((s.end - s.start) - expected) <= 1 / 30, (manifest, s)
                # Chunk borders (every 10 s) look like any other segment border.
                assert [round(t - s.start, 3) for t in s.keyframes] == grid, (manifest, s)
            audio = [s for s in streams if s.kind == "audio"]
            assert len(audio) == 1 and audio[0].monotonic
            assert abs((audio[0].end - audio[0].start) - expected) < 0.1
            assert frames == 900 and monotonic, manifest

        async with httpx.AsyncClient() as client:
            poster = await client.get(f"{edge.url}/vod/{asset}/poster.jpg")
            assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
            with av.open(io.BytesIO(poster.content)) as image:
                frame = next(image.decode(video=0))
                assert (frame.width, frame.height) == (1280, 720)
            vtt = await client.get(f"{edge.url}/vod/{asset}/thumbnails.vtt")
            assert vtt.text.startswith("WEBVTT") and vtt.text.count("#xywh=") == 6
            sprite = await client.get(f"{edge.url}/vod/{asset}/thumbnails.jpg")
            with av.open(io.BytesIO(sprite.content)) as image:
                frame = next(image.decode(video=0))
                assert (frame.width, frame.height) == (6 * 160, 90)
    finally:
        await edge.close()
        await origin.close()


# ---- the upload protocol -------------------------------------------------------------


async def test_tus_protocol_errors(small_origin: OriginService) -> None:
    key = small_origin.keys.create("creator")
    url = f"{small_origin.url}/api/vod"
    async with httpx.AsyncClient() as client:
        options = await client.options(url)
        assert options.status_code == 204
        assert options.headers["tus-version"] == "1.0.0"
        assert options.headers["tus-extension"] == "creation,termination"
        assert int(options.headers["tus-max-size"]) == VodConfig().max_upload

        no_key = await client.post(url, headers={**TUS, "Upload-Length": "10"})
        assert no_key.status_code == 401 and "API key" in no_key.json()["error"]
        wrong = await client.post(url, headers={**auth(key[:-4] + "0000"), "Upload-Length": "10"})
        assert wrong.status_code == 401 and "wrong secret" in wrong.json()["error"]
        old = await client.post(
            url, headers={**auth(key), "Tus-Resumable": "0.2.2", "Upload-Length": "10"}
        )
        assert old.status_code == 412 and old.headers["tus-version"] == "1.0.0"
        huge = await client.post(
            url, headers={**auth(key), "Upload-Length": str(VodConfig().max_upload + 1)}
        )
        assert huge.status_code == 413
        assert (
            await client.post(url, headers={**auth(key), "Upload-Length": "-1"})
        ).status_code == 400

        location = await tus_create(client, small_origin.url, key, 10)
        bad_type = await client.patch(
            location,
            headers={**auth(key), "Upload-Offset": "0", "Content-Type": "video/mp4"},
            content=b"0123456789",
        )
        assert bad_type.status_code == 415
        assert (await tus_patch(client, location, key, 3, b"x")).status_code == 409
        too_long = await tus_patch(client, location, key, 0, b"0123456789AB")
        assert too_long.status_code == 400
        other = small_origin.keys.create("someone-else")
        head = await client.head(location, headers=auth(other))
        assert head.status_code == 404  # not yours: not there
        deleted = await client.delete(location, headers=auth(key))
        assert deleted.status_code == 204
        assert (await client.head(location, headers=auth(key))).status_code == 404
        assert (await client.get(f"{url}/{location.rsplit('/', 2)[-2]}")).status_code == 404


async def test_interrupted_upload_resumes(small_origin: OriginService, tmp_path: Path) -> None:
    source = await make_clip(tmp_path / "src.mp4", 4)
    data = source.read_bytes()
    key = small_origin.keys.create("creator")
    async with httpx.AsyncClient() as client:
        location = await tus_create(client, small_origin.url, key, len(data))
        first = await tus_patch(client, location, key, 0, data[: len(data) // 4])
        assert first.status_code == 204
    # The connection drops in the middle of the second PATCH: a raw socket announces the
    # whole rest, sends a part, and closes.
    path = location.split(str(small_origin.http.port), 1)[1]
    sent = len(data) // 4
    part = data[sent : sent + len(data) // 3]
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: Bearer {key}\r\nUpload-Offset: {sent}\r\n"
        "Content-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {len(data) - sent}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", small_origin.http.port)) as sock:
        sock.sendall(head + part)
        await asyncio.sleep(0.5)
    async with httpx.AsyncClient() as client:
        for _ in range(50):  # the server notices the disconnect asynchronously
            head_response = await client.head(location, headers=auth(key))
            offset = int(head_response.headers["upload-offset"])
            if offset == sent + len(part):
                break
            await asyncio.sleep(0.1)
        assert offset == sent + len(part), offset  # what arrived before the drop is kept
        job = (await client.get(f"{small_origin.url}/api/vod/{location.rsplit('/', 2)[-2]}")).json()
        assert job["state"] == "uploading" and job["uploaded"] == offset

    rc, out, err = await run_cli(
        "vod", "add", str(source), "--origin", small_origin.url, "--key", key,
        "--resume", location, "--chunk-size", "64K",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert rc == 0, err
    assert f"resuming {location} at {offset} of {len(data)} bytes" in err
    asset = out.split()[0]
    assert location.rsplit("/", 2)[-2] == asset
    stored = small_origin.config.data_dir / "vod" / "uploads" / asset
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    job = await wait_job(small_origin, asset)
    assert job["state"] == "ready" and job["renditions"] == ["240p", "audio"]


# tuspy opens the file by path and never closes it (and closes a stream it is given
# before it is done with it): its leak, not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_tuspy_uploads_and_resumes(small_origin: OriginService, tmp_path: Path) -> None:
    """tuspy (tus.io's Python client, not ours) creates, uploads in chunks, stops half
    way, and a new client resumes from its own URL store (HEAD, then PATCH at the offset)."""
    from tusclient import client as tus
    from tusclient.storage.filestorage import FileStorage

    source = await make_clip(tmp_path / "src.mp4", 4)
    data = source.read_bytes()
    key = small_origin.keys.create("creator")
    storage_file = str(tmp_path / "tus-urls.json")

    def start(stop_at: int | None) -> str:
        client = tus.TusClient(f"{small_origin.url}/api/vod", headers=auth(key))
        urls = FileStorage(storage_file)
        try:
            uploader = client.uploader(
                str(source),
                chunk_size=64 * 1024,
                metadata={"filename": "src.mp4"},
                store_url=True,
                url_storage=urls,
            )
            uploader.upload(stop_at=stop_at)
            url: str = uploader.url
        finally:
            urls.close()
        return url

    half = len(data) // 2
    location = await asyncio.to_thread(start, half)
    async with httpx.AsyncClient() as client:
        head = await client.head(location, headers=auth(key))
    assert head.status_code == 200
    stopped = int(head.headers["upload-offset"])
    assert half <= stopped < len(data)  # tuspy stops at the first chunk edge past half
    assert await asyncio.to_thread(start, None) == location  # resumed, not re-created
    asset = location.rsplit("/", 2)[-2]
    stored = small_origin.config.data_dir / "vod" / "uploads" / asset
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    job = await wait_job(small_origin, asset)
    assert job["state"] == "ready" and job["renditions"] == ["240p", "audio"]


async def test_cli_remembers_an_unfinished_upload(
    small_origin: OriginService, tmp_path: Path
) -> None:
    """A killed `vod add` is re-run with the same file: it finds its upload and resumes."""
    source = await make_clip(tmp_path / "src.mp4", 8, "640x360")
    key = small_origin.keys.create("creator")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshcast.cli", "vod", "add", str(source),
        "--origin", small_origin.url, "--key", key, "--chunk-size", "4K",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )  # fmt: skip
    cache = tmp_path / "cache" / "meshcast" / "uploads.json"
    offset = 0
    async with httpx.AsyncClient() as client:
        for _ in range(500):
            entries = json.loads(cache.read_text()) if cache.exists() else {}
            if entries:
                head = await client.head(next(iter(entries.values())), headers=auth(key))
                offset = int(head.headers["upload-offset"])
                if offset > 0:
                    break
            await asyncio.sleep(0.01)
    proc.kill()
    await proc.wait()
    assert 0 < offset < source.stat().st_size
    location = next(iter(json.loads(cache.read_text()).values()))
    rc, out, err = await run_cli(
        "vod", "add", str(source), "--origin", small_origin.url, "--key", key, env=env
    )
    assert rc == 0, err
    assert f"resuming {location} at " in err
    assert out.split()[0] == location.rsplit("/", 2)[-2]
    assert json.loads(cache.read_text()) == {}


async def test_cli_reports_a_failed_job(small_origin: OriginService, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a video\n" * 100)
    key = small_origin.keys.create("creator")
    rc, out, err = await run_cli(
        "vod", "add", str(junk), "--origin", small_origin.url, "--key", key,
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert rc == 1 and out == ""
    assert err.strip().splitlines()[-1] == (
        "meshcast: transcode failed: not a media file: no known container format"
    )
    rc, _, err = await run_cli(
        "vod", "add", str(junk), "--origin", small_origin.url, "--key", "stream_x_y",
        env={"XDG_CACHE_HOME": str(tmp_path / "cache2")},
    )  # fmt: skip
    assert rc == 1 and "401" in err


# ---- restart during transcoding --------------------------------------------------------


@pytest.mark.timeout(300)
async def test_restart_during_transcoding_resumes_the_job(tmp_path: Path) -> None:
    data_dir = tmp_path / "origin"
    source = await make_clip(tmp_path / "src.mp4", 16)
    # One worker and one segment per chunk: many small steps to stop in the middle of.
    first = OriginService(origin_config(data_dir, workers=1, chunk_segments=1))
    await first.start()
    try:
        key = first.keys.create("creator")
        asset = await upload(first, key, source.read_bytes())
        job = await wait_job(first, asset, ("transcoding",))
        while job["progress"] == 0:
            job = await wait_job(first, asset, ("transcoding", "ready"))
            assert job["state"] == "transcoding", "finished before the restart"
    finally:
        await first.close()
    with sqlite3.connect(data_dir / "vod" / "jobs.sqlite") as db:
        state = db.execute("SELECT state FROM jobs WHERE id = ?", (asset,)).fetchone()[0]
        done = [i for (i,) in db.execute("SELECT idx FROM chunks WHERE job_id = ?", (asset,))]
    assert state == "transcoding"
    # One segment per chunk: chunk i is segment i.
    store_dir = data_dir / "vod" / asset / "240p"
    before = {f"{i}.m4s": (store_dir / f"{i}.m4s").stat().st_mtime_ns for i in done if i >= 0}
    assert 0 < len(before) < 8, done

    second = OriginService(origin_config(data_dir, workers=1, chunk_segments=1))
    await second.start()
    try:
        job = await wait_job(second, asset, within=90)
        assert job["state"] == "ready", job
        after = {p.name: p.stat().st_mtime_ns for p in store_dir.glob("*.m4s")}
        assert len(after) == 8
        # Chunks finished before the restart were kept, not transcoded again.
        assert all(after[name] == mtime for name, mtime in before.items())
        url = f"{second.url}/vod/{asset}/master.m3u8"
        frames, monotonic = await asyncio.to_thread(decode_lowest_rung, url)
        assert frames == 16 * 30 and monotonic
    finally:
        await second.close()


# ---- bad input -------------------------------------------------------------------------


async def _clip_bytes(kind: str, tmp_path: Path) -> bytes:
    src = tmp_path / f"{kind}.mp4"
    if kind == "not-media":
        return b"just some text, certainly not a video\n" * 200
    if kind == "empty":
        return b""
    if kind == "truncated":
        whole = (await make_clip(src, 2)).read_bytes()
        return whole[: len(whole) * 2 // 3]  # ffmpeg writes moov at the end: it is lost
    if kind == "audio-only":
        await ffmpeg("-f", "lavfi", "-i", "sine", "-t", "2", "-c:a", "aac", str(src))
    elif kind == "video-only":
        await make_clip(src, 2, "320x240", 30, "-an")
    elif kind == "odd-size":
        await make_clip(src, 2, "1278x719")
    elif kind == "vfr":
        # Drop frames irregularly and keep the gaps: variable frame durations.
        await make_clip(
            src, 3, "320x240", 30,
            "-vf", r"select='not(between(n\,10\,25))*not(between(n\,40\,44))'", "-vsync", "vfr",
        )  # fmt: skip
    elif kind == "rotated":
        # A phone-style file: landscape pixels with a white box in the top-left corner,
        # and a display matrix saying "turn 90 degrees counter-clockwise" (PyAV writes it;
        # the Debian ffmpeg 5.1 CLI cannot).
        plain = await make_clip(
            tmp_path / "plain.mp4", 2, "320x240", 30,
            "-vf", "drawbox=x=0:y=0:w=60:h=60:color=white:t=fill",
        )  # fmt: skip
        with av.open(str(plain)) as inp, av.open(str(src), "w") as out:
            streams = {}
            for stream in inp.streams:
                streams[stream.index] = out.add_stream_from_template(stream)
            streams[inp.streams.video[0].index].set_display_rotation(90)
            for packet in inp.demux():
                if packet.dts is not None:
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
    elif kind == "10-bit":
        await make_clip(src, 2, "320x240", 30, "-pix_fmt", "yuv420p10le", "-profile:v", "high10")
    return src.read_bytes()


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("not-media", "not a media file: no known container format"),
        ("empty", "empty upload: the file has no bytes"),
        ("truncated", "truncated or missing moov"),
        ("audio-only", "no video stream: audio-only uploads are not supported"),
    ],
)
async def test_bad_input_fails_with_a_clear_error(
    small_origin: OriginService, tmp_path: Path, kind: str, error: str
) -> None:
    key = small_origin.keys.create("creator")
    asset = await upload(small_origin, key, await _clip_bytes(kind, tmp_path))
    job = await wait_job(small_origin, asset)
    assert job["state"] == "failed" and job["error"].startswith(error), job
    assert job["playback"] is None
    # The origin is unharmed and the upload is kept for inspection.
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{small_origin.url}/healthz")).status_code == 200
    assert (small_origin.config.data_dir / "vod" / "uploads" / asset).exists()


@pytest.mark.parametrize(
    ("kind", "size", "renditions"),
    [
        ("video-only", (320, 240), ["240p"]),
        ("odd-size", (640, 360), ["360p", "240p", "audio"]),  # 1278x719 scales to even
        ("vfr", (320, 240), ["240p", "audio"]),
        ("rotated", (240, 320), ["240p", "audio"]),  # rotation applied: portrait
        ("10-bit", (320, 240), ["240p", "audio"]),
    ],
)
async def test_awkward_input_works(
    small_origin: OriginService,
    tmp_path: Path,
    kind: str,
    size: tuple[int, int],
    renditions: list[str],
) -> None:
    key = small_origin.keys.create("creator")
    data = await _clip_bytes(kind, tmp_path)
    asset = await upload(small_origin, key, data)
    job = await wait_job(small_origin, asset)
    assert job["state"] == "ready", job
    assert job["renditions"] == renditions
    url = f"{small_origin.url}/vod/{asset}/master.m3u8"
    streams = await asyncio.to_thread(read_packets, url)
    video = next(s for s in streams if s.kind == "video")
    assert (video.width, video.height) == size
    assert video.monotonic
    seconds = 3 if kind == "vfr" else 2
    # Constant frame rate out, whatever came in (the VFR source lost 21 frames).
    assert video.packets == seconds * 30, video
    assert abs(video.end - video.start - seconds) <= 1 / 30
    frames, monotonic = await asyncio.to_thread(decode_lowest_rung, url)
    assert frames == seconds * 30 and monotonic
    assert await asyncio.to_thread(video_pix_fmt, url) == "yuv420p"
    if kind == "rotated":
        # The top-left box of the stored picture, turned counter-clockwise: bottom-left.
        luma = await asyncio.to_thread(first_frame_luma, url)
        assert luma[-50:, :50].mean() > 200, luma[-50:, :50].mean()
        assert luma[:50, :50].mean() < 200


async def test_creator_api_key_owns_the_asset_and_can_sell_it(
    small_origin: OriginService, tmp_path: Path
) -> None:
    """VOD meets access control: an upload with a creator's API key records the creator as
    the asset's owner; the creator makes it token-only and sells it (TVOD); /vod files then
    need a token, and its manifests carry the token to their children."""
    from meshcast.keys import ADMIN_KIND, API_KIND

    origin = small_origin
    creator = origin.keys.create("studio", API_KIND)
    other = origin.keys.create("rival", API_KIND)
    admin = origin.keys.create("ops", ADMIN_KIND)
    asset = await upload(origin, creator, (await make_clip(tmp_path / "c.mp4", 2)).read_bytes())
    assert (await wait_job(origin, asset))["state"] == "ready"

    def bearer(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(base_url=origin.url, timeout=30) as c:
        scope = f"vod/{asset}"
        r = await c.put(f"/api/access/{scope}", json={"access": "token"}, headers=bearer(other))
        assert r.status_code == 403  # not the rival's asset
        r = await c.put(f"/api/access/{scope}", json={"access": "token"}, headers=bearer(creator))
        assert r.json() == {"scope": scope, "access": "token", "owner": "studio"}
        master = f"/vod/{asset}/master.m3u8"
        assert (await c.get(master)).status_code == 401
        product = {"kind": "tvod", "name": "Film", "price_cents": 399, "duration_s": 3600,
                   "scopes": [scope]}  # fmt: skip
        r = await c.post("/api/products", headers=bearer(creator), json=product)
        assert r.status_code == 201, r.text
        grant = {"viewer": "v1", "product": r.json()["id"]}
        assert (await c.post("/api/entitlements", headers=bearer(admin), json=grant)).is_success
        r = await c.post(
            "/api/tokens", headers=bearer(creator), json={"viewer": "v1", "scope": scope}
        )
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        r = await c.get(master, params={"token": token})
        assert r.status_code == 200 and f"token={token}" in r.text
        child = next(line for line in r.text.splitlines() if line.endswith(f"token={token}"))
        assert (await c.get(f"/vod/{asset}/{child}")).status_code == 200


# ---- hardening (issue 20, attack 5) ----------------------------------------------------


async def test_small_job_is_not_stuck_behind_a_large_one(tmp_path: Path) -> None:
    """One worker, a 30-chunk job from one owner, then a 1-chunk job from another: the
    small one is ready while the large one is still transcoding."""
    service = OriginService(origin_config(tmp_path / "o", workers=1, chunk_segments=1))
    await service.start()
    try:
        big_key = service.keys.create("bigco")
        small_key = service.keys.create("indie")
        big = await make_clip(tmp_path / "big.mp4", 60, "320x240", 30)
        small = await make_clip(tmp_path / "small.mp4", 1, "320x240", 30)
        large = await upload(service, big_key, big.read_bytes())
        await wait_job(service, large, ("transcoding",))
        little = await upload(service, small_key, small.read_bytes())
        assert (await wait_job(service, little, within=120))["state"] == "ready"
        job = await wait_job(service, large, ("transcoding", "ready"))
        assert job["state"] == "transcoding", "the large job finished first"
    finally:
        await service.close()


async def test_delete_cancels_mid_transcode_and_nothing_resumes(tmp_path: Path) -> None:
    data = tmp_path / "o"
    first = OriginService(origin_config(data, workers=1, chunk_segments=1))
    await first.start()
    try:
        key = first.keys.create("creator")
        clip = await make_clip(tmp_path / "c.mp4", 20, "320x240", 30)
        asset = await upload(first, key, clip.read_bytes())
        job = await wait_job(first, asset, ("transcoding",))
        while job["progress"] == 0:
            job = await wait_job(first, asset, ("transcoding", "ready"))
        assert job["state"] == "transcoding"
        async with httpx.AsyncClient() as client:
            location = f"{first.url}/api/vod/{asset}/upload"
            assert (await client.delete(location, headers=auth(key))).status_code == 204
            assert (await client.get(f"{first.url}/api/vod/{asset}")).status_code == 404
        assert not (data / "vod" / "uploads" / asset).exists()
        # A refused upload is failed, not queued: nothing to resume either.
        huge = await make_clip(tmp_path / "h.mp4", 1, "4160x240", 30)
        async with httpx.AsyncClient(timeout=60) as client:
            location = await tus_create(client, first.url, key, huge.stat().st_size)
            refused = await tus_patch(client, location, key, 0, huge.read_bytes())
        assert refused.status_code == 422
        assert "4160x240 is larger than the 4096x4096 limit" in refused.json()["error"]
        refused_id = location.rsplit("/", 2)[-2]
        await asyncio.sleep(1.0)  # running chunks of the cancelled job end meanwhile
    finally:
        await first.close()
    assert not (data / "vod" / asset).exists() or not any((data / "vod" / asset).rglob("*"))
    second = OriginService(origin_config(data, workers=1, chunk_segments=1))
    await second.start()
    try:
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{second.url}/api/vod/{asset}")).status_code == 404
            job = (await client.get(f"{second.url}/api/vod/{refused_id}")).json()
        assert job["state"] == "failed" and "4096x4096" in job["error"]
        assert not second.vod._active
    finally:
        await second.close()


@pytest.mark.parametrize(
    ("limits", "clip", "reason"),
    [
        ({"max_pixel_rate": 320 * 240 * 30 - 1}, ("320x240", 30), "Mpixel/s, above the"),
        ({"max_duration": 1.5}, ("320x240", 30), "above the 1.5 s limit"),
        ({"video_codecs": frozenset({"vp9"})}, ("320x240", 30), "video codec 'h264' is not"),
        ({"audio_codecs": frozenset({"opus"})}, ("320x240", 30), "audio codec 'aac' is not"),
    ],
)
async def test_probe_limits_answer_422(
    tmp_path: Path, limits: dict[str, Any], clip: tuple[str, int], reason: str
) -> None:
    from meshcast.config import ProbeLimits

    service = OriginService(origin_config(tmp_path / "o", probe=ProbeLimits(**limits)))
    await service.start()
    try:
        key = service.keys.create("creator")
        data = (await make_clip(tmp_path / "c.mp4", 2, *clip)).read_bytes()
        async with httpx.AsyncClient(timeout=60) as client:
            location = await tus_create(client, service.url, key, len(data))
            response = await tus_patch(client, location, key, 0, data)
        assert response.status_code == 422 and reason in response.json()["error"], response.text
        assert response.headers["upload-offset"] == str(len(data))
    finally:
        await service.close()


async def test_owner_quotas(tmp_path: Path) -> None:
    service = OriginService(origin_config(tmp_path / "o", max_owner_jobs=2, max_owner_bytes=1000))
    await service.start()
    try:
        key = service.keys.create("creator")
        other = service.keys.create("other")
        async with httpx.AsyncClient() as client:
            await tus_create(client, service.url, key, 400)
            await tus_create(client, service.url, key, 400)
            third = await client.post(
                f"{service.url}/api/vod", headers={**auth(key), "Upload-Length": "10"}
            )
            assert third.status_code == 429 and "limit 2" in third.json()["error"]
            big = await client.post(
                f"{service.url}/api/vod", headers={**auth(other), "Upload-Length": "1001"}
            )
            assert big.status_code == 413 and "storage quota" in big.json()["error"]
            # Another owner's quota is their own.
            await tus_create(client, service.url, other, 1000)
    finally:
        await service.close()
