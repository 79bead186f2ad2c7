"""``python -m tests.pyav_publisher URL SECONDS``: publish synthetic H.264 + AAC over RTMP
with libavformat (FFmpeg 8.1 via PyAV). Exits non-zero with the FFmpeg error if refused."""

from __future__ import annotations

import sys
import time
from fractions import Fraction

import av


def push(url: str, seconds: float, fps: int = 30, codec: str = "libx264") -> None:
    with av.open(url, mode="w", format="flv") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        if codec == "libx264":
            video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        elif codec == "libx265":
            video.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        mux_test_signal(out, video, audio, seconds, fps)


def mux_test_signal(
    out: av.container.OutputContainer,
    video: av.VideoStream,
    audio: av.AudioStream,
    seconds: float,
    fps: int,
    realtime: bool = False,
) -> None:
    """``seconds`` of a 320x240 test pattern and a 440 Hz tone, encoded and muxed into
    ``out`` (paced to the wall clock with ``realtime``), then the encoders flushed."""
    src = av.open(f"testsrc2=size=320x240:rate={fps}", format="lavfi")
    tone = av.open("sine=frequency=440:sample_rate=48000", format="lavfi")
    try:
        tones = tone.decode(audio=0)
        samples = 0
        start = time.monotonic()
        for n, frame in enumerate(src.decode(video=0)):
            if n >= seconds * fps:
                break
            if realtime and (delay := start + n / fps - time.monotonic()) > 0:
                time.sleep(delay)
            frame.pts = n
            frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
            while samples < (n + 1) * 48000 / fps:
                aframe = next(tones)
                aframe.pts = samples
                samples += aframe.samples
                out.mux(audio.encode(aframe))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    finally:
        src.close()
        tone.close()


if __name__ == "__main__":
    push(sys.argv[1], float(sys.argv[2]), codec=sys.argv[3] if len(sys.argv) > 3 else "libx264")
