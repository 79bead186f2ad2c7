"""RTMP playback of a live stream with the players people restream with: rtmpdump
(librtmp, as OBS media sources and most restreamers) and the ffmpeg CLI (libavformat)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from origin.service import OriginService
from tests.clients import decode, ffmpeg_publish, finished, run, tool
from tests.conftest import rtmp_url, wait_for_state
from tests.e2e.test_whip import ffmpeg_whip_push, whip_url

pytestmark = pytest.mark.e2e


async def test_rtmpdump_and_ffmpeg_play_the_live_source(
    origin: OriginService, tmp_path: Path
) -> None:
    key = origin.keys.create("cam")
    publisher = await ffmpeg_publish(rtmp_url(origin, key), 7.0, rate=25)
    await wait_for_state(origin, "cam", "live")
    await asyncio.sleep(1.0)  # the publisher's sequence headers and first GOP are in
    play = f"rtmp://127.0.0.1:{origin.rtmp.port}/live/cam"
    dumped, copied = tmp_path / "rtmpdump.flv", tmp_path / "ffmpeg.flv"
    # rtmpdump records until the stream ends (NetStream.Play.Stop, then we close); the
    # ffmpeg CLI reads three seconds of it at the same time.
    (code, _, err), (ffcode, _, fferr) = await asyncio.gather(
        run(tool("rtmpdump"), "--live", "-q", "-r", play, "-o", str(dumped), timeout=60),
        run(
            tool("ffmpeg"),
            "-v",
            "error",
            "-i",
            play,
            "-t",
            "3",
            "-c",
            "copy",
            str(copied),
            timeout=60,
        ),
    )
    assert not await finished(publisher)
    assert code == 0, err
    assert ffcode == 0, fferr
    whole = await decode(str(dumped))
    # From the first keyframe after joining (~1 s in) to the end of the 7 s stream.
    assert whole.video_frames >= 4 * 25, whole
    assert 4.0 <= whole.video_seconds <= 6.5, whole
    assert whole.audio_seconds >= 4.0 and whole.sample_rate == 44100, whole
    part = await decode(str(copied))
    assert part.video_frames >= 2.5 * 25 and part.audio_seconds >= 2.5, part


async def test_play_of_a_name_that_is_not_live_is_refused_clearly(origin: OriginService) -> None:
    play = f"rtmp://127.0.0.1:{origin.rtmp.port}/live/nobody"
    code, _, err = await run(tool("rtmpdump"), "--live", "-r", play, "-o", "-", timeout=30)
    assert code != 0 and "NetStream.Play.StreamNotFound" in err, err
    code, _, err = await run(tool("ffmpeg"), "-v", "error", "-i", play, "-f", "null", "-")
    assert code != 0 and "stream 'nobody' is not live" in err, err


async def test_a_whip_stream_plays_over_rtmp_as_h264_video(
    origin: OriginService, tmp_path: Path
) -> None:
    """A WebRTC publisher's H.264 re-framed as FLV (its Opus has no legacy FLV form)."""
    key = origin.keys.create("wcam")
    publisher = await ffmpeg_whip_push(whip_url(origin, "wcam"), key, 8.0)
    await wait_for_state(origin, "wcam", "live", within=20)
    await asyncio.sleep(1.0)
    out = tmp_path / "whip.flv"
    play = f"rtmp://127.0.0.1:{origin.rtmp.port}/live/wcam"
    code, _, err = await run(
        tool("rtmpdump"), "--live", "-q", "-r", play, "-o", str(out), timeout=60
    )
    await asyncio.wait_for(publisher.communicate(), 60)
    assert code == 0, err
    got = await decode(str(out))
    assert got.video_frames >= 4 * 30 and got.audio_seconds == 0, got
    assert abs(got.video_seconds - got.video_frames / 30) < 0.5, got
