"""H.264 encoder backends: NVENC when it opens, libx264 otherwise.

A codec is checked by opening it with the rung's settings, never by its name existing:
PyAV's FFmpeg always lists h264_nvenc, which opens only with an NVIDIA driver and an
NVENC-capable GPU.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import av
from av.audio.codeccontext import AudioCodecContext
from av.codec.context import Flags
from av.video.codeccontext import VideoCodecContext

from transcoder.ladder import Rung

log = logging.getLogger(__name__)


class Backend(enum.StrEnum):
    NVENC = "nvenc"
    X264 = "x264"


CODEC_NAMES = {Backend.NVENC: "h264_nvenc", Backend.X264: "libx264"}


class EncoderUnavailable(RuntimeError):
    """A forced encoder backend cannot be opened on this machine."""


@dataclass(frozen=True, slots=True)
class EncoderSettings:
    fps: Fraction
    time_base: Fraction = Fraction(1, 90_000)


def _options(backend: Backend, rung: Rung) -> dict[str, str]:
    if backend is Backend.NVENC:
        return {
            "preset": "p4",
            "tune": "ll",
            "rc": "cbr",
            "forced-idr": "1",  # forced keyframes become IDRs: closed GOPs
            "no-scenecut": "1",
            "bf": "0",
            "maxrate": f"{rung.maxrate_kbps}k",
            "bufsize": f"{rung.bufsize_kbits}k",
        }
    # Keyframes come only where the pipeline forces them (segment boundaries): a huge
    # keyint, no scene-cut keyframes, closed GOPs, forced frames as IDR.
    return {
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": (
            "keyint=100000:min-keyint=1:scenecut=0:open-gop=0:forced-idr=1:"
            f"vbv-maxrate={rung.maxrate_kbps}:vbv-bufsize={rung.bufsize_kbits}"
        ),
    }


def video_context(codec: str, mode: Literal["r", "w"]) -> VideoCodecContext:
    """A video decoder or encoder by FFmpeg codec name (ValueError for another kind)."""
    ctx = av.CodecContext.create(codec, mode)
    if not isinstance(ctx, VideoCodecContext):
        raise ValueError(f"{codec} is not a video codec")
    return ctx


def audio_context(codec: str, mode: Literal["r", "w"]) -> AudioCodecContext:
    """An audio decoder or encoder by FFmpeg codec name (ValueError for another kind)."""
    ctx = av.CodecContext.create(codec, mode)
    if not isinstance(ctx, AudioCodecContext):
        raise ValueError(f"{codec} is not an audio codec")
    return ctx


def open_encoder(backend: Backend, rung: Rung, settings: EncoderSettings) -> VideoCodecContext:
    """Open an H.264 encoder for ``rung``; raises av.error.FFmpegError if it cannot."""
    ctx = video_context(CODEC_NAMES[backend], "w")
    ctx.width, ctx.height = rung.width, rung.height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = settings.time_base
    ctx.framerate = settings.fps
    ctx.bit_rate = rung.video_kbps * 1000
    ctx.flags |= Flags.global_header
    ctx.options = _options(backend, rung)
    ctx.open()
    return ctx


def _probe(backend: Backend, rung: Rung, settings: EncoderSettings) -> str | None:
    """None if the backend opens with these settings, else the reason it does not."""
    try:
        ctx = open_encoder(backend, rung, settings)
    except av.error.FFmpegError as exc:
        return exc.strerror or str(exc)  # str() also lists every option: noise in logs
    except ValueError as exc:
        return str(exc)
    del ctx
    return None


def select_backend(preference: str, rung: Rung, settings: EncoderSettings) -> Backend:
    """``auto``: NVENC if it opens, else libx264. ``nvenc``/``x264``: that one or
    EncoderUnavailable with FFmpeg's reason."""
    if preference not in ("auto", *Backend):
        raise EncoderUnavailable(f"unknown encoder {preference!r}: use auto, nvenc or x264")
    candidates = [Backend.NVENC, Backend.X264] if preference == "auto" else [Backend(preference)]
    reasons = []
    for backend in candidates:
        reason = _probe(backend, rung, settings)
        if reason is None:
            return backend
        reasons.append(f"{CODEC_NAMES[backend]}: {reason}")
        if preference == "auto":
            log.info("encoder %s unavailable (%s); trying the next", CODEC_NAMES[backend], reason)
    raise EncoderUnavailable(f"cannot open encoder ({'; '.join(reasons)})")
