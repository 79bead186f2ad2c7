"""Third-party clients driven by the interoperability tests (tests/e2e/test_interop_*):
Debian's ffmpeg CLI as a configurable publisher, and the players' outputs read back as
decoded frames and seconds. Every client is a Debian package `make test` installs
(Makefile APT_COMMANDS), so a missing one is a broken setup, not a skip."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any

import anyio

# anyio imports its file helpers on first use, in the thread that serves a FileResponse;
# under pytest that import is rewritten (anyio is a pytest plugin) and CPython 3.11.7's
# AST constructor is not thread-safe ("SystemError: AST constructor recursion depth
# mismatch"): import them here, on the main thread, first.
_ = anyio.open_file


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: run `make test` (installs the Debian clients)"
    return path


async def run(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def ffmpeg_publish(
    url: str,
    seconds: float,
    *,
    video: bool = True,
    sample_rate: int = 44100,
    channels: int = 2,
    size: str = "320x240",
    rate: int = 25,
    extra: tuple[str, ...] = (),
    realtime: bool = True,
) -> asyncio.subprocess.Process:
    """Debian's ffmpeg CLI publishing a test pattern and a tone over RTMP (FLV), in real
    time; ``video=False`` publishes audio only. ``url`` may be a file (``realtime=False``:
    the same FLV, written at once)."""
    layout = "stereo" if channels == 2 else "mono"
    inputs = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}"]
    codecs = ["-c:a", "aac", "-b:a", "64k", "-ac", str(channels), "-channel_layout", layout]
    if video:
        inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", *inputs]
        codecs = [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            str(rate * 2),
            *codecs,
        ]
    return await asyncio.create_subprocess_exec(
        tool("ffmpeg"),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        *(["-re"] if realtime else []),
        *inputs,
        "-t",
        str(seconds),
        *codecs,
        *extra,
        "-f",
        "flv",
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(proc: asyncio.subprocess.Process, within: float = 90) -> str:
    """Wait for a publisher; its stderr (empty when all went well)."""
    _, err = await asyncio.wait_for(proc.communicate(), within)
    return err.decode(errors="replace")


@dataclass(frozen=True)
class Decoded:
    """What a client decoded: frames and seconds per media type."""

    video_frames: int
    video_seconds: float
    audio_seconds: float
    sample_rate: int
    channels: int


async def ffprobe_streams(url: str) -> list[dict[str, Any]]:
    code, out, err = await run(
        tool("ffprobe"), "-v", "error", "-show_streams", "-of", "json", url, timeout=60
    )
    assert code == 0, err
    streams: list[dict[str, Any]] = json.loads(out)["streams"]
    return streams


async def decode(url: str, *input_options: str) -> Decoded:
    """Decode every frame of ``url`` with the ffmpeg CLI (frames and their timestamps come
    from -show_frames of ffprobe: what a player would present)."""
    code, out, err = await run(
        tool("ffprobe"),
        "-v",
        "error",
        *input_options,
        "-show_entries",
        "frame=media_type,best_effort_timestamp_time,nb_samples:"
        "stream=codec_type,sample_rate,channels",
        "-of",
        "json",
        url,
        timeout=120,
    )
    assert code == 0, err
    body = json.loads(out)
    frames: list[dict[str, Any]] = body.get("frames", [])
    sound = [s for s in body.get("streams", []) if s.get("codec_type") == "audio"]
    rate = int(sound[0]["sample_rate"]) if sound else 0
    video = [f for f in frames if f.get("media_type") == "video"]
    audio = [f for f in frames if f.get("media_type") == "audio"]
    video_seconds = 0.0
    if len(video) > 1:
        times = [float(f["best_effort_timestamp_time"]) for f in video]
        video_seconds = max(times) - min(times) + (times[1] - times[0])
    audio_seconds = sum(int(f["nb_samples"]) for f in audio) / rate if rate else 0.0
    return Decoded(
        len(video), video_seconds, audio_seconds, rate, int(sound[0]["channels"]) if sound else 0
    )


def extinf_seconds(playlist: str) -> float:
    return sum(float(x) for x in re.findall(r"^#EXTINF:([0-9.]+),", playlist, re.M))


class Clock:
    """Seconds since it was made: time to first frame, measured by the test."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start
