"""GStreamer 1.22 as publisher (rtmp2sink, librtmp's rtmpsink) and as player (playbin3 and
playbin with USE_PLAYBIN3=1, whose hlsdemux2 reads our live HLS)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshcast.config import OriginConfig, TranscodeConfig
from origin.service import OriginService
from tests.clients import Clock, decode, extinf_seconds, ffmpeg_publish, finished, tool
from tests.conftest import rtmp_url, wait_for_state
from tests.e2e.test_ladder import wait_for_url

pytestmark = pytest.mark.e2e

FRAMES = 150  # 6 s at 25 fps
_SOURCES = (
    f"videotestsrc is-live=true num-buffers={FRAMES} ! "
    "video/x-raw,format=I420,width=320,height=240,framerate=25/1 ! "
    "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=50 ! h264parse ! "
    "flvmux name=mux streamable=true ! {sink} "
    f"audiotestsrc is-live=true num-buffers={FRAMES * 44100 // 25 // 1024} "
    "samplesperbuffer=1024 ! audio/x-raw,rate=44100 ! audioconvert ! avenc_aac ! aacparse ! mux."
)


@pytest.mark.parametrize("sink", ["rtmp2sink", "rtmpsink"])
async def test_gstreamer_publishers_every_frame_reaches_the_ladder(
    origin: OriginService, sink: str
) -> None:
    """flvmux in live mode stamps some frames with their predecessor's millisecond
    (rtmpsink: most of them): they are retimed, not dropped."""
    name = f"gst-{sink}"
    key = origin.keys.create(name)
    # librtmp takes its options after the URL: "URL live=1".
    url = rtmp_url(origin, key) + (" live=1" if sink == "rtmpsink" else "")
    await gst_launch(_SOURCES.format(sink=f'{sink} location="{url}"'))
    await wait_for_state(origin, name, "ended")
    playlist = (await wait_for_url(f"{origin.url}/live/{name}/240p/index.m3u8", 30, "ENDLIST")).text
    decoded = await decode(f"{origin.url}/live/{name}/240p/index.m3u8")
    assert decoded.video_frames >= FRAMES - 2, decoded
    assert abs(decoded.video_seconds - extinf_seconds(playlist)) < 0.1, decoded
    audio = await decode(f"{origin.url}/live/{name}/audio/index.m3u8")
    assert audio.audio_seconds > FRAMES / 25 - 0.5, audio


async def gst_launch(pipeline: str, within: float = 60) -> None:
    proc = await asyncio.create_subprocess_shell(
        f"{tool('gst-launch-1.0')} -q {pipeline}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode == 0, out.decode(errors="replace")


_CHAIN = re.compile(r"vsink.*last-message = chain.*pts: (\d+):(\d+):(\d+\.\d+)")


@pytest.fixture
async def short_segments(tmp_path: Path) -> AsyncIterator[OriginService]:
    """1 s segments, 3 listed: a stream 20 s old has fragment times (tfdt) far past what
    a player that times fragments by playlist position expects."""
    service = OriginService(
        OriginConfig(
            data_dir=tmp_path,
            http_port=0,
            rtmp_port=0,
            transcode=TranscodeConfig(segment_duration=1.0, window_segments=3),
        )
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def first_frames(url: str, element: str, env: dict[str, str]) -> tuple[float, list[float]]:
    """Seconds until ``element`` rendered its first video frame, and the presentation
    times of the first 50 frames it rendered (in real time: sync=true)."""
    clock = Clock()
    proc = await asyncio.create_subprocess_exec(
        tool("gst-launch-1.0"),
        "-v",
        element,
        f"uri={url}",
        "video-sink=fakesink name=vsink sync=true silent=false",
        "audio-sink=fakesink sync=true",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    first = float("inf")
    pts: list[float] = []
    try:
        while len(pts) < 50 and clock() < 30:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 30 - clock())
            except TimeoutError:
                break
            if not line:
                break
            if match := _CHAIN.search(line.decode(errors="replace")):
                h, m, sec = match.groups()
                pts.append(int(h) * 3600 + int(m) * 60 + float(sec))
                first = min(first, clock())
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    return first, pts


async def test_playbin3_starts_an_old_live_stream_within_a_few_segments(
    short_segments: OriginService,
) -> None:
    """GStreamer's legacy hlsdemux (plain playbin) times fragments by their position in
    the first playlist it loaded while qtdemux stamps frames with their tfdt: it waits
    (stream age - window) before the first frame, for any live fMP4 HLS (FFmpeg's own
    too). hlsdemux2 (playbin3, or playbin with USE_PLAYBIN3=1) maps tfdt to the playlist
    and starts at the live edge: docs/clients.md."""
    origin = short_segments
    key = origin.keys.create("gplay")
    publisher = await ffmpeg_publish(rtmp_url(origin, key), 45.0)
    url = f"{origin.url}/live/gplay/master.m3u8"
    try:
        await wait_for_url(url, 30)
        await asyncio.sleep(18)
        for element, env in (("playbin3", {}), ("playbin", {"USE_PLAYBIN3": "1"})):
            first, pts = await first_frames(url, element, env)
            # Live edge: three 1 s segments back at most, plus room for a loaded machine.
            assert first < 6, (element, first)
            assert len(pts) >= 50, (element, len(pts))  # 2 s of frames, in order, 25 fps
            assert all(b > a for a, b in itertools.pairwise(pts)), element
            assert abs((pts[-1] - pts[0]) - (len(pts) - 1) / 25) < 0.1, (element, pts)
    finally:
        publisher.kill()
        await finished(publisher)
