"""RTMP ingest against real third-party clients: Debian's ffmpeg CLI and PyAV (libavformat)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import httpx
import pytest

from meshcast.config import OriginConfig
from meshcast.keys import KeyStore
from origin.service import OriginService
from tests.conftest import rtmp_url, stream_json, wait_for_state
from tests.rtmp_client import handshake_c0c1

pytestmark = pytest.mark.e2e


async def ffmpeg_push(
    ffmpeg: str,
    url: str,
    seconds: float,
    size: str = "640x360",
    rate: int = 25,
    tune: str = "zerolatency",
) -> asyncio.subprocess.Process:
    """Publish with Debian's ffmpeg CLI. ``tune=""`` keeps x264's B-frames (as OBS)."""
    return await asyncio.create_subprocess_exec(
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={rate}",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        *(["-tune", tune] if tune else []),
        "-g",
        str(rate * 2),
        "-c:a",
        "aac",
        "-b:a",
        "96k",
        "-f",
        "flv",
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def pyav_push(url: str, seconds: float, codec: str = "libx264") -> tuple[int, str]:
    """Publish with libavformat's RTMP client (FFmpeg 8.1 inside PyAV), in a child
    process: libavformat's blocking connect holds the GIL, which would stall our loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.pyav_publisher",
        url,
        str(seconds),
        codec,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


async def test_ffmpeg_cli_publish_goes_live_and_ends(
    origin: OriginService, keys: KeyStore, ffmpeg_cli: str
) -> None:
    key = keys.create("cam1")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 6.0)
    live = await wait_for_state(origin, "cam1", "live")
    assert live["protocol"] == "rtmp"
    # codec details arrive with the sequence header, right after publish
    for _ in range(50):
        live = await stream_json(origin, "cam1") or live
        if live["video"] and live["audio"]:
            break
        await asyncio.sleep(0.1)
    assert live["video"]["codec"] == "h264"
    assert (live["video"]["width"], live["video"]["height"]) == (640, 360)
    assert live["audio"]["codec"] == "aac" and live["audio"]["sample_rate"] == 44100
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    ended = await wait_for_state(origin, "cam1", "ended")
    assert abs(ended["video"]["frames"] - 150) <= 150 * 0.05, ended
    assert abs(ended["video"]["fps"] - 25) < 1.5
    # 6 s of 44.1 kHz AAC is ~258 frames of 1024 samples
    assert abs(ended["audio"]["frames"] - 258) <= 258 * 0.05, ended


async def test_pyav_publish_and_republish_after_drop(origin: OriginService, keys: KeyStore) -> None:
    key = keys.create("pyav")
    for _attempt in range(2):
        rc, err = await pyav_push(rtmp_url(origin, key), 2.0)
        assert rc == 0, err
        ended = await wait_for_state(origin, "pyav", "ended")
        assert ended["video"]["codec"] == "h264"
        assert (ended["video"]["width"], ended["video"]["height"]) == (320, 240)
        assert ended["video"]["frames"] == 60
        assert ended["audio"]["sample_rate"] == 48000 and ended["audio"]["channels"] == 2


async def test_wrong_key_refused_with_log(
    origin: OriginService, keys: KeyStore, ffmpeg_cli: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys.create("real")
    caplog.set_level(logging.WARNING)
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, "stream_000000000000_nope"), 3.0)
    _, _stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode != 0
    assert await stream_json(origin, "real") is None
    assert "publish refused: unknown stream key" in caplog.text


async def test_revoked_key_refused_pyav(
    origin: OriginService, keys: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    key = keys.create("gone")
    keys.revoke("gone")
    caplog.set_level(logging.WARNING)
    rc, err = await pyav_push(rtmp_url(origin, key), 1.0)
    # libavformat maps an onStatus error to EPERM
    assert rc != 0 and "Operation not permitted" in err
    assert await stream_json(origin, "gone") is None
    assert "was revoked" in caplog.text


async def test_duplicate_publisher_refused_and_garbage_isolated(
    origin: OriginService, keys: KeyStore, ffmpeg_cli: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = keys.create("main")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 5.0)
    await wait_for_state(origin, "main", "live")
    caplog.set_level(logging.WARNING)
    # a second publisher with the same key is refused; the first keeps going
    rc, err = await pyav_push(rtmp_url(origin, key), 1.0)
    # libavformat maps an onStatus error to EPERM
    assert rc != 0 and "Operation not permitted" in err
    assert "already live" in caplog.text
    # garbage after a valid handshake closes only that connection
    reader, writer = await asyncio.open_connection("127.0.0.1", origin.rtmp.port)
    writer.write(handshake_c0c1())
    await reader.readexactly(1 + 2 * 1536)
    writer.write(bytes(1536) + b"\x02\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00\x00\x00\x00\x00\x00")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    assert "absurd chunk size 0" in caplog.text
    stream = await stream_json(origin, "main")
    assert stream is not None and stream["state"] == "live"
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()


async def test_silent_client_is_dropped(tmp_path: Path) -> None:
    """A peer that connects and then sends nothing is closed by the handshake timeout."""
    service = OriginService(
        OriginConfig(data_dir=tmp_path, http_port=0, rtmp_port=0, rtmp_handshake_timeout=0.5)
    )
    await service.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.rtmp.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await service.close()


async def test_dropped_publisher_can_republish(
    origin: OriginService, keys: KeyStore, ffmpeg_cli: str
) -> None:
    """An encoder that dies mid-stream (no FCUnpublish, TCP reset) ends the stream; the
    same key publishes again at once, without restarting anything."""
    key = keys.create("flaky")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 20.0)
    await wait_for_state(origin, "flaky", "live")
    await asyncio.sleep(1.0)
    proc.kill()
    await proc.wait()
    ended = await wait_for_state(origin, "flaky", "ended")
    assert ended["end_reason"] in ("publisher disconnected", "connection closed") or ended[
        "end_reason"
    ].startswith("connection lost")
    rc, err = await pyav_push(rtmp_url(origin, key), 1.0)
    assert rc == 0, err
    again = await wait_for_state(origin, "flaky", "ended")
    assert again["protocol"] == "rtmp" and again["video"]["frames"] == 30


async def test_events_and_stream_api(origin: OriginService, keys: KeyStore) -> None:
    key = keys.create("evt")
    async with httpx.AsyncClient(base_url=origin.url, timeout=30) as client:
        async with client.stream("GET", "/api/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            rc, err = await pyav_push(rtmp_url(origin, key), 1.0)
            assert rc == 0, err
            seen: list[str] = []
            async for line in events.aiter_lines():
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                if "stream.ended" in seen:
                    break
        # Other events may come between (recording.started: the key records).
        assert [e for e in seen if e.startswith("stream.")][:2] == [
            "stream.published",
            "stream.ended",
        ]
        assert seen.index("recording.started") > seen.index("stream.published")
        one = (await client.get("/api/streams/evt")).json()
        assert one["name"] == "evt" and one["playback"]["hls"] == "/live/evt/master.m3u8"
        missing = await client.get("/api/streams/nope")
        assert missing.status_code == 404 and "no stream named" in missing.json()["error"]


async def test_enhanced_rtmp_hevc_is_accepted_and_transcoded(
    origin: OriginService, keys: KeyStore
) -> None:
    """FFmpeg 8.1's FLV muxer sends HEVC as Enhanced RTMP (FourCC hvc1); the ladder
    turns it into H.264 that every player decodes."""
    key = keys.create("hevc")
    rc, err = await pyav_push(rtmp_url(origin, key), 2.0, "libx265")
    assert rc == 0, err
    ended = await wait_for_state(origin, "hevc", "ended")
    assert ended["video"]["codec"] == "hevc" and ended["video"]["frames"] == 60
    playlist = origin.config.data_dir / "live/hevc/240p/index.m3u8"
    for _ in range(100):
        if playlist.exists() and "#EXT-X-ENDLIST" in playlist.read_text():
            break
        await asyncio.sleep(0.1)
    master = (origin.config.data_dir / "live/hevc/master.m3u8").read_text()
    assert 'CODECS="avc1.' in master and "RESOLUTION=320x240" in master
