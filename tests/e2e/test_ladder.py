"""Ladder + CMAF packaging, checked with independent readers: the ffmpeg CLI / ffprobe
(libavformat 5.1 HLS and DASH demuxers) against the origin's HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshcast.config import OriginConfig, TranscodeConfig
from meshcast.ingest import VideoConfig, deliver
from meshcast.keys import KeyStore
from meshcast.store import LocalStore
from origin.demo import DemoSettings, generate
from origin.service import OriginService
from tests.conftest import rtmp_url, wait_for_state
from tests.e2e.test_rtmp_ingest import ffmpeg_push
from transcoder.pipeline import LadderPipeline

pytestmark = pytest.mark.e2e

FRAME = 1 / 30


async def run_tool(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_for_url(
    url: str, within: float = 30.0, contains: str = "", client: httpx.AsyncClient | None = None
) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + within
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(httpx.AsyncClient())
        while True:
            response = await client.get(url)
            if response.status_code == 200 and contains in response.text:
                return response
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{url}: {response.status_code} {response.text[:200]}")
            await asyncio.sleep(0.2)


async def probe_streams(url: str) -> list[dict[str, Any]]:
    rc, out, err = await run_tool("ffprobe", "-v", "error", "-show_streams", "-of", "json", url)
    assert rc == 0, err
    streams: list[dict[str, Any]] = json.loads(out)["streams"]
    return streams


async def keyframe_times(url: str) -> list[float]:
    rc, out, err = await run_tool(
        "ffprobe",
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time,flags",
        "-of",
        "csv=p=0",
        url,
    )
    assert rc == 0, err
    times = []
    for line in out.split():
        pts, flags = line.split(",", 1)
        if "K" in flags:
            times.append(round(float(pts), 4))
    return times


def extinf(playlist: str) -> list[float]:
    return [float(x) for x in re.findall(r"#EXTINF:([0-9.]+),", playlist)]


async def test_rtmp_720p_source_becomes_a_three_rung_ladder(
    origin: OriginService, keys: KeyStore, ffmpeg_cli: str
) -> None:
    key = keys.create("ladder")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 10.0, "1280x720", 30)
    base = f"{origin.url}/live/ladder"

    # live: manifests appear, playlists slide without ENDLIST, the MPD is dynamic
    master = (await wait_for_url(f"{base}/master.m3u8")).text
    assert master.startswith("#EXTM3U\n#EXT-X-VERSION:7\n")
    live_mpd = (await wait_for_url(f"{base}/manifest.mpd")).text
    assert 'type="dynamic"' in live_mpd and "minimumUpdatePeriod" in live_mpd
    live_playlist = await wait_for_url(f"{base}/360p/index.m3u8")
    assert "#EXT-X-ENDLIST" not in live_playlist.text
    assert live_playlist.headers["cache-control"] == "public, max-age=1"
    assert live_playlist.headers["content-type"] == "application/vnd.apple.mpegurl"

    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    await wait_for_state(origin, "ladder", "ended")
    for rendition in ("720p", "480p", "360p", "audio"):
        await wait_for_url(f"{base}/{rendition}/index.m3u8", 60, "#EXT-X-ENDLIST")
    master = (await wait_for_url(f"{base}/master.m3u8")).text

    # multivariant playlist: 3 rungs (never above the 720p source) sharing one AAC group
    variants = re.findall(r"#EXT-X-STREAM-INF:(.*)\n(.*)\n", master)
    assert [uri for _, uri in variants] == ["720p/index.m3u8", "480p/index.m3u8", "360p/index.m3u8"]
    for attrs, _ in variants:
        assert re.search(r'CODECS="avc1\.[0-9a-f]{6},mp4a\.40\.2"', attrs)
        assert re.search(r"BANDWIDTH=\d+", attrs) and 'AUDIO="audio"' in attrs
        assert "FRAME-RATE=30.000" in attrs
    assert "RESOLUTION=1280x720" in variants[0][0] and "RESOLUTION=640x360" in variants[2][0]
    assert '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio"' in master

    # independent readers: libavformat's HLS and DASH demuxers see the same ladder
    for url in (f"{base}/master.m3u8", f"{base}/manifest.mpd"):
        streams = await probe_streams(url)
        heights = {s["height"] for s in streams if s["codec_type"] == "video"}
        assert heights == {720, 480, 360}, url
        assert any(s["codec_name"] == "aac" for s in streams), url
    assert 'type="static"' in (await wait_for_url(f"{base}/manifest.mpd")).text

    # every segment of every rung decodes without error
    for rendition in ("720p", "480p", "360p", "audio"):
        rc, _, err = await run_tool(
            "ffmpeg",
            "-v",
            "error",
            "-xerror",
            "-i",
            f"{base}/{rendition}/index.m3u8",
            "-f",
            "null",
            "-",
        )
        assert rc == 0 and not err.strip(), f"{rendition}: {err}"

    # aligned keyframes: identical timestamps on every rung
    keys_by_rung = [
        await keyframe_times(f"{base}/{r}/index.m3u8") for r in ("720p", "480p", "360p")
    ]
    assert len(keys_by_rung[0]) >= 5
    assert keys_by_rung[0] == keys_by_rung[1] == keys_by_rung[2]

    # segment durations within one frame of the 2 s target, except the last
    async with httpx.AsyncClient() as client:
        for rendition in ("720p", "480p", "360p"):
            playlist = (await client.get(f"{base}/{rendition}/index.m3u8")).text
            durations = extinf(playlist)
            assert len(durations) >= 5
            assert all(abs(d - 2.0) <= FRAME + 1e-6 for d in durations[:-1]), durations
            assert 0 < durations[-1] <= 2.0 + FRAME
        segment_uri = re.findall(r"^(\d+\.m4s)$", playlist, re.M)[0]
        segment = await client.get(f"{base}/360p/{segment_uri}")
        assert segment.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert segment.content[4:8] == b"styp"
        init = await client.get(f"{base}/audio/init.mp4")
        assert init.headers["content-type"] == "audio/mp4" and init.content[4:8] == b"ftyp"
        for bad in (
            "../keys.json",
            "ladder/../../keys.json",
            "ladder/720p/x.m4s",
            "ladder/7/0.m4s",
        ):
            response = await client.get(f"{base.rsplit('/', 1)[0]}/{bad}")
            assert response.status_code == 404, bad


async def test_360p_source_gets_one_video_rung(
    origin: OriginService, keys: KeyStore, ffmpeg_cli: str
) -> None:
    key = keys.create("small")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 4.0, "640x360", 25)
    await asyncio.wait_for(proc.communicate(), 60)
    base = f"{origin.url}/live/small"
    await wait_for_url(f"{base}/360p/index.m3u8", 60, "#EXT-X-ENDLIST")
    master = (await wait_for_url(f"{base}/master.m3u8")).text
    assert re.findall(r"^\S+/index\.m3u8$", master, re.M) == ["360p/index.m3u8"]
    assert "FRAME-RATE=25.000" in master


def test_1080p_source_gets_four_rungs(tmp_path: Path) -> None:
    """Pipeline-level (no RTMP): 2.5 s of 1080p synthetic H.264 + AAC through the ladder."""
    pipeline = LadderPipeline("big", LocalStore(tmp_path), TranscodeConfig())

    generate(
        DemoSettings(width=1920, height=1080, duration=2.5, realtime=False),
        lambda item: deliver(pipeline, item),
        lambda: False,
    )
    pipeline.on_end()
    master = (tmp_path / "live/big/master.m3u8").read_text()
    assert re.findall(r"RESOLUTION=(\d+x\d+)", master) == [
        "1920x1080",
        "1280x720",
        "854x480",
        "640x360",
    ]
    assert pipeline.frames_in == 75 and pipeline.frames_dropped == 0


async def test_a_crashing_worker_ends_only_its_stream(
    origin: OriginService, keys: KeyStore, ffmpeg_cli: str
) -> None:
    """A stream whose transcoder dies is ended (logged, stream.ended) while another
    publisher's ladder keeps going to a clean ENDLIST."""
    key = keys.create("good")
    proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 5.0, "640x360", 25)
    await wait_for_state(origin, "good", "live")
    # A publisher whose codec no decoder handles makes its worker fail.
    bad = origin.registry.publish("bad", "test", "in-process")
    bad.on_video_config(VideoConfig("vp6", b"\x00"))
    ended = await wait_for_state(origin, "bad", "ended", within=30)
    assert ended["end_reason"].startswith("transcoder failed (exit code")
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    await wait_for_url(f"{origin.url}/live/good/360p/index.m3u8", 60, "#EXT-X-ENDLIST")


async def test_forced_unavailable_encoder_fails_at_start(tmp_path: Path) -> None:
    rc, _out, err = await run_tool(
        sys.executable,
        "-m",
        "meshcast.cli",
        "origin",
        "--data",
        str(tmp_path),
        "--http-port",
        "0",
        "--rtmp-port",
        "0",
        "--encoder",
        "nvenc",
    )
    if "h264_nvenc" not in err:
        pytest.fail(f"expected a clear NVENC error, got rc={rc} err={err!r}")
    assert rc == 1
    assert err.strip().splitlines()[-1].startswith("meshcast: cannot open encoder (h264_nvenc")


async def test_source_rung_passes_bframed_h264_through(tmp_path: Path, ffmpeg_cli: str) -> None:
    """With --source-rung the publisher's H.264 (here with B-frames, as OBS sends) is a
    rendition of its own: same bytes, no re-encode, in HLS and in its own DASH set."""
    service = OriginService(
        OriginConfig(
            data_dir=tmp_path,
            http_port=0,
            rtmp_port=0,
            transcode=TranscodeConfig(source_rung=True, ladder=((360, 800),)),
        )
    )
    await service.start()
    try:
        key = service.keys.create("src")
        proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(service, key), 5.0, "640x360", 25, tune="")
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()
        base = f"{service.url}/live/src"
        await wait_for_url(f"{base}/source/index.m3u8", 60, "#EXT-X-ENDLIST")
        await wait_for_url(f"{base}/360p/index.m3u8", 60, "#EXT-X-ENDLIST")
        master = (await wait_for_url(f"{base}/master.m3u8")).text
        assert "source/index.m3u8" in master and "360p/index.m3u8" in master
        rc, _, err = await run_tool(
            "ffmpeg",
            "-v",
            "error",
            "-xerror",
            "-i",
            f"{base}/source/index.m3u8",
            "-f",
            "null",
            "-",
        )
        assert rc == 0 and not err.strip(), err
        streams = await probe_streams(f"{base}/manifest.mpd")
        assert sum(1 for s in streams if s["codec_type"] == "video") == 2
        # the source rung keeps the encoder's B-frames: it was not re-encoded
        rc, out, err = await run_tool(
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_frames",
            "-show_entries",
            "frame=pict_type",
            "-of",
            "csv=p=0",
            f"{base}/source/index.m3u8",
        )
        assert rc == 0 and "B" in out.split(), err
    finally:
        await service.close()
