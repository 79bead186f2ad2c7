"""streamlink (recording and restreaming) and mpv (playback) against our live HLS, DASH
and VOD. Debian's streamlink 5.2.1 for live; VOD with the pinned PyPI streamlink (5.3+):
5.2.1 closes a substream's named pipe before FFmpeg reads it when a short VOD downloads
faster than FFmpeg starts (streamlink issue #5159), for any HLS with a separate audio
rendition, FFmpeg's own included: docs/clients.md."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from origin.service import OriginService
from tests.clients import decode, ffmpeg_publish, finished, run, tool
from tests.conftest import rtmp_url
from tests.e2e.test_ladder import wait_for_url
from tests.e2e.test_vod import make_clip, small_origin, upload, wait_job  # noqa: F401

pytestmark = pytest.mark.e2e

PINNED_STREAMLINK = str(Path(sys.executable).parent / "streamlink")


async def test_debian_streamlink_records_live_hls(
    origin: OriginService, tmp_path: Path, ffmpeg_cli: str
) -> None:
    key = origin.keys.create("sl")
    publisher = await ffmpeg_publish(rtmp_url(origin, key), 20.0, size="640x360")
    try:
        await wait_for_url(f"{origin.url}/live/sl/master.m3u8", 30)
        out = tmp_path / "live.ts"
        code, _, err = await run(
            tool("streamlink"),
            "--hls-duration",
            "6",
            "-o",
            str(out),
            f"hls://{origin.url}/live/sl/master.m3u8",
            "best",
            timeout=60,
        )
        assert code == 0, err
        recorded = await decode(str(out))
        # --hls-duration cuts at a segment boundary: two or three segments of both.
        assert recorded.video_frames >= 4 * 25 - 2, recorded
        assert abs(recorded.audio_seconds - recorded.video_seconds) < 0.2, recorded
        assert recorded.sample_rate == 44100, recorded
    finally:
        publisher.kill()
        await finished(publisher)


async def test_streamlink_starts_our_vod_every_time(
    small_origin: OriginService,  # noqa: F811 (the fixture, imported above)
    tmp_path: Path,
) -> None:
    clip = await make_clip(tmp_path / "clip.mp4", 6)
    key = small_origin.keys.create("owner", kind="api")
    asset = await upload(small_origin, key, clip.read_bytes())
    assert (await wait_job(small_origin, asset))["state"] == "ready"
    url = f"hls://{small_origin.url}/vod/{asset}/master.m3u8"
    for attempt in range(3):
        out = tmp_path / f"vod{attempt}.ts"
        code, _, err = await run(PINNED_STREAMLINK, "-o", str(out), url, "best", timeout=60)
        assert code == 0, err
        got = await decode(str(out))
        assert got.video_frames >= 6 * 30 - 2 and got.audio_seconds >= 5.9, (attempt, got)


@pytest.mark.parametrize("manifest", ["master.m3u8", "manifest.mpd"])
async def test_mpv_plays_live_hls_and_dash(
    origin: OriginService, tmp_path: Path, manifest: str
) -> None:
    name = "mpv" + manifest.split(".")[1]
    key = origin.keys.create(name)
    publisher = await ffmpeg_publish(rtmp_url(origin, key), 20.0)
    try:
        await wait_for_url(f"{origin.url}/live/{name}/master.m3u8", 30)
        await asyncio.sleep(2)
        # mpv's encoding mode writes what it decoded and would have shown: 75 frames.
        out = tmp_path / "mpv.nut"
        code, stdout, err = await run(
            tool("mpv"),
            "--no-config",
            "--frames=75",
            f"--o={out}",
            "--of=nut",
            "--ovc=rawvideo",
            "--oac=pcm_s16le",
            f"{origin.url}/live/{name}/{manifest}",
            timeout=90,
        )
        assert code == 0, stdout + err
        shown = await decode(str(out))
        assert shown.video_frames == 75, shown
        assert abs(shown.video_seconds - 3.0) < 0.1 and shown.audio_seconds > 2.5, shown
    finally:
        publisher.kill()
        await finished(publisher)
