"""Moderation inference in a worker process: the first frame (a keyframe: every segment
starts with one) of a CMAF video segment through nudenet's shipped ONNX detector.

The detector's output is returned as it is (label, score, box per detection): the plugin
stores and serves it unchanged, and applies the flag rule (labels + threshold) on top.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

_detector: Any = None
POSTER_WIDTH = 320


def load_detector(threads: int = 1) -> None:
    """Worker initializer: load the ONNX session once per process, on ``threads`` threads
    (onnxruntime's default takes every core, which the edge and the transcoder need)."""
    global _detector
    import nudenet
    import onnxruntime
    from nudenet import NudeDetector

    detector = NudeDetector()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    model = Path(nudenet.__file__).with_name("320n.onnx")
    detector.onnx_session = onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    _detector = detector


def first_frame(init: bytes, segment: bytes) -> tuple[float, npt.NDArray[np.uint8]]:
    """(media time, BGR image) of the segment's first decodable frame."""
    return _first_video_frame(init + segment, "mp4", "segment has no decodable video frame")


def _first_video_frame(
    data: bytes, container_format: str | None, missing: str
) -> tuple[float, npt.NDArray[np.uint8]]:
    with av.open(io.BytesIO(data), format=container_format, mode="r") as container:
        for frame in container.decode(video=0):
            base = frame.time_base
            time = float(frame.pts * base) if frame.pts is not None and base else 0.0
            image = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            return time, image
    raise ValueError(missing)


def detect(image: npt.NDArray[np.uint8]) -> list[dict[str, Any]]:
    if _detector is None:
        load_detector()
    detections: list[dict[str, Any]] = _detector.detect(image)
    return detections


def flagged(
    detections: Sequence[dict[str, Any]], labels: Sequence[str], threshold: float
) -> list[dict[str, Any]]:
    return [d for d in detections if d.get("class") in labels and d.get("score", 0) >= threshold]


def poster(image: npt.NDArray[np.uint8], blur: bool) -> bytes:
    height = max(2, round(image.shape[0] * POSTER_WIDTH / image.shape[1]))
    small = cv2.resize(image, (POSTER_WIDTH, height), interpolation=cv2.INTER_AREA)
    if blur:
        # Strong enough that no shape survives: the kernel spans a quarter of the width.
        small = cv2.GaussianBlur(small, (81, 81), 40)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(jpeg.tobytes())


@dataclass(frozen=True, slots=True)
class Sample:
    media_time: float
    detections: list[dict[str, Any]]
    flagged: list[dict[str, Any]]
    poster: bytes
    poster_blurred: bool


def moderate(
    init: bytes, segment: bytes, labels: Sequence[str], threshold: float, blur: str
) -> Sample:
    """``blur``: "never", "flagged" (blur this poster if this frame is flagged), "always"."""
    media_time, image = first_frame(init, segment)
    detections = detect(image)
    hits = flagged(detections, labels, threshold)
    blurred = blur == "always" or (blur == "flagged" and bool(hits))
    return Sample(media_time, detections, hits, poster(image, blurred), blurred)


def object_job(content: bytes) -> dict[str, Any]:
    """The same job on pinned content: an image file, else a video's first frame."""
    decoded = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
    if decoded is not None:
        media_time, image = 0.0, np.asarray(decoded, dtype=np.uint8)
    else:
        missing = "content is neither an image nor a video"
        media_time, image = _first_video_frame(content, None, missing)
    return {"media_time": media_time, "detections": detect(image)}


def job(init: bytes, segment: bytes) -> dict[str, Any]:
    """An inference-marketplace job (``meshcast/inference.py``): the detector's output for
    the segment's first frame, as JSON."""
    media_time, image = first_frame(init, segment)
    return {"media_time": media_time, "detections": detect(image)}
