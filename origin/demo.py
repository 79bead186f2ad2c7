"""The built-in ``demo`` stream: a moving test pattern and a tone, generated with
libavfilter (testsrc2 + sine) and encoded with libx264 + AAC through PyAV.

Encoding runs in a worker process (never in the event loop); the worker sends ready
packets in the ingest interface's form over a pipe, paced to real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from meshcast import codecs
from meshcast.ingest import IngestItem, MediaKind, MediaPacket, deliver
from meshcast.lifeline import worker_start
from origin.registry import LiveStream, StreamRegistry

log = logging.getLogger(__name__)

DEMO_STREAM = "demo"


@dataclass(frozen=True, slots=True)
class DemoSettings:
    width: int = 1280
    height: int = 720
    fps: int = 30
    gop_seconds: int = 2
    video_kbps: int = 2500
    audio_kbps: int = 128
    sample_rate: int = 48_000
    duration: float | None = None  # None: until stopped
    realtime: bool = True


def generate(
    settings: DemoSettings, emit: Callable[[IngestItem], None], stop: Callable[[], bool]
) -> None:
    """Encode the synthetic stream, calling ``emit`` for configs then packets."""
    import av
    from av.codec.context import Flags

    fps = settings.fps
    gop = fps * settings.gop_seconds
    video_src = av.open(
        f"testsrc2=size={settings.width}x{settings.height}:rate={fps}", format="lavfi"
    )
    audio_src = av.open(
        f"sine=frequency=440:beep_factor=4:sample_rate={settings.sample_rate}", format="lavfi"
    )
    venc = av.CodecContext.create("libx264", "w")
    venc.width, venc.height, venc.pix_fmt = settings.width, settings.height, "yuv420p"
    venc.time_base = Fraction(1, fps)
    venc.framerate = Fraction(fps)
    venc.bit_rate = settings.video_kbps * 1000
    venc.gop_size = gop
    venc.flags |= Flags.global_header
    # Fixed, closed GOPs without scene-cut keyframes: segments can then cut anywhere.
    venc.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0",
    }
    venc.open()
    aenc = av.CodecContext.create("aac", "w")
    aenc.sample_rate = settings.sample_rate
    aenc.layout = "stereo"
    aenc.format = "fltp"
    aenc.time_base = Fraction(1, settings.sample_rate)
    aenc.bit_rate = settings.audio_kbps * 1000
    aenc.open()
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=settings.sample_rate)

    emit(codecs.h264_video_config(codecs.avc_decoder_config_from_annexb(venc.extradata or b"")))
    emit(codecs.aac_audio_config(bytes(aenc.extradata or b"")))

    def emit_video(packets: list[Any]) -> None:
        for p in packets:
            assert p.pts is not None and p.dts is not None
            data = codecs.annexb_to_length_prefixed(bytes(p))
            emit(MediaPacket(MediaKind.VIDEO, data, p.dts, p.pts, p.is_keyframe, venc.time_base))

    def emit_audio(packets: list[Any]) -> None:
        for p in packets:
            assert p.pts is not None
            emit(MediaPacket(MediaKind.AUDIO, bytes(p), p.pts, p.pts, True, aenc.time_base))

    audio_frames = audio_src.decode(audio=0)
    audio_samples = 0
    start = time.monotonic()
    try:
        for n, frame in enumerate(video_src.decode(video=0)):
            video_time = n / fps
            if stop() or (settings.duration is not None and video_time >= settings.duration):
                break
            while audio_samples <= video_time * settings.sample_rate:
                for resampled in resampler.resample(next(audio_frames)):
                    resampled.pts = audio_samples
                    audio_samples += resampled.samples
                    emit_audio(aenc.encode(resampled))
            if settings.realtime:
                delay = start + video_time - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            frame.pts = n
            emit_video(venc.encode(frame))
        emit_video(venc.encode(None))
        emit_audio(aenc.encode(None))
    finally:
        video_src.close()
        audio_src.close()


def _worker(settings: DemoSettings, conn: Connection, stop: MpEvent, parent: int) -> None:
    worker_start(parent)
    try:
        generate(settings, conn.send, stop.is_set)
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


class DemoSource:
    """Publishes the demo stream into the registry from a worker process."""

    def __init__(self, registry: StreamRegistry, settings: DemoSettings | None = None) -> None:
        self.registry = registry
        self.settings = settings or DemoSettings()
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_worker,
            args=(self.settings, send, self._stop, os.getpid()),
            name="meshcast-demo",
        )
        self._send = send
        self._stream: LiveStream | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stream = self.registry.publish(DEMO_STREAM, "demo", "in-process")
        self._process.start()
        self._send.close()  # the child holds the write end now; EOF tells us it exited
        self._thread = threading.Thread(
            target=self._pump, args=(loop,), name="meshcast-demo-reader", daemon=True
        )
        self._thread.start()
        log.info(
            "demo stream %r: %dx%d@%d testsrc2 + sine, libx264 + AAC",
            DEMO_STREAM,
            self.settings.width,
            self.settings.height,
            self.settings.fps,
        )

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                item = self._recv.recv()
            except (EOFError, OSError):
                break
            loop.call_soon_threadsafe(self._deliver, item)
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            loop.call_soon_threadsafe(self._finished)

    def _deliver(self, item: IngestItem) -> None:
        stream = self._stream
        if stream is None or not stream.live:
            return
        deliver(stream, item)

    def _finished(self) -> None:
        if self._stream is not None and self._stream.live:
            reason = "server shutdown" if self._closing else "demo source stopped"
            if not self._closing:
                log.warning("demo source exited (exit code %s)", self._process.exitcode)
            self.registry.end(self._stream, reason)

    async def close(self) -> None:
        self._closing = True
        self._stop.set()
        await asyncio.to_thread(self._process.join, 5)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 2)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2)
        self._finished()
        self._recv.close()
