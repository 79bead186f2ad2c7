"""GStreamer 1.22 as publisher (rtmp2sink, librtmp's rtmpsink) and as player (playbin3,
whose hlsdemux2 reads our live HLS)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re

import pytest

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


async def test_playbin3_starts_our_live_hls_within_a_few_segments(
    origin: OriginService, ffmpeg_cli: str
) -> None:
    key = origin.keys.create("gplay")
    publisher = await ffmpeg_publish(rtmp_url(origin, key), 40.0)
    try:
        # An old stream (tfdt far from 0): the case legacy hlsdemux waits on.
        await wait_for_url(f"{origin.url}/live/gplay/master.m3u8", 30)
        await asyncio.sleep(14)
        clock = Clock()
        proc = await asyncio.create_subprocess_exec(
            tool("gst-launch-1.0"),
            "-v",
            "playbin3",
            f"uri={origin.url}/live/gplay/master.m3u8",
            "video-sink=fakesink name=vsink sync=true silent=false",
            "audio-sink=fakesink sync=true",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        first: float | None = None
        pts: list[float] = []
        try:
            while len(pts) < 75 and clock() < 40:
                line = await asyncio.wait_for(proc.stdout.readline(), 40)
                if not line:
                    break
                if match := _CHAIN.search(line.decode(errors="replace")):
                    h, m, s = match.groups()
                    pts.append(int(h) * 3600 + int(m) * 60 + float(s))
                    first = first if first is not None else clock()
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        assert first is not None, "playbin3 showed no frame"
        # Live edge: three segments back at most (6 s), plus room for a loaded machine.
        assert first < 12, first
        assert len(pts) >= 75, len(pts)  # 3 s of frames at 25 fps, in order, at 25 fps
        assert all(b > a for a, b in itertools.pairwise(pts))
        assert abs((pts[-1] - pts[0]) - (len(pts) - 1) / 25) < 0.1
    finally:
        publisher.kill()
        await finished(publisher)
