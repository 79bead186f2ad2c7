"""A WHIP publisher built on aiortc's own RTCPeerConnection (the client side of
aiortc, none of meshcast's server code): synthetic VP8/H.264 video + Opus tone."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from dataclasses import dataclass

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_PTIME = 0.02


class PatternTrack(MediaStreamTrack):
    """Moving bars at ``fps``, paced to real time; ``pause_at`` frames in, the source
    stalls for ``pause_for`` seconds (a camera hiccup / network freeze)."""

    kind = "video"

    def __init__(
        self,
        width: int = 320,
        height: int = 240,
        fps: int = 30,
        pause_at: int = -1,
        pause_for: float = 0.0,
    ) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.pause_at, self.pause_for = pause_at, pause_for
        self.sent = 0
        self._start: float | None = None
        # Set at the first frame's capture (monotonic clock): the bench's time zero.
        self.started = asyncio.Event()
        self.capture_start = 0.0
        self._shift = 0.0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = self.capture_start = time.monotonic()
            self.started.set()
        if self.sent == self.pause_at:
            await asyncio.sleep(self.pause_for)
            self._shift += self.pause_for
        due = self._start + self._shift + self.sent / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        img = np.zeros((self.height, self.width, 3), np.uint8)
        x = (self.sent * 4) % self.width
        img[:, x : x + 16] = (255, 255, 255)
        img[: self.height // 2, :, 1] = 90
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = round((time.monotonic() - self._start) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A 440 Hz stereo tone in 20 ms frames, paced to real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._samples = 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        n = int(AUDIO_RATE * AUDIO_PTIME)
        due = self._start + self._samples / AUDIO_RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        t = (np.arange(n) + self._samples) / AUDIO_RATE
        tone = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)
        frame = AudioFrame.from_ndarray(
            np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += n
        return frame


@dataclass
class WhipClient:
    pc: RTCPeerConnection
    response: httpx.Response
    video: PatternTrack | None

    @property
    def location(self) -> str:
        return self.response.headers["location"]


async def make_offer(
    video_codec: str | None = "VP8", audio: bool = True, video: PatternTrack | None = None
) -> tuple[RTCPeerConnection, PatternTrack | None]:
    """A sendonly offer from aiortc, all candidates gathered (WHIP has no trickle here)."""
    pc = RTCPeerConnection()
    track = None
    if video_codec is not None:
        track = video or PatternTrack()
        transceiver = pc.addTransceiver(track, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video")
        prefs = [c for c in caps.codecs if c.mimeType.lower() == f"video/{video_codec.lower()}"]
        transceiver.setCodecPreferences(prefs)
    if audio:
        pc.addTransceiver(ToneTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, track


async def publish(
    endpoint: str, key: str, video_codec: str = "VP8", video: PatternTrack | None = None
) -> WhipClient:
    pc, track = await make_offer(video_codec, video=video)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            endpoint,
            content=pc.localDescription.sdp,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"},
        )
    if response.status_code != 201:
        await pc.close()
        raise AssertionError(f"WHIP POST {response.status_code}: {response.text}")
    await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
    return WhipClient(pc, response, track)
