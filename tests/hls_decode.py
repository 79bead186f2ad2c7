"""``python -m tests.hls_decode URL``: decode every stream of an HLS media playlist with
libavformat/libavcodec (FFmpeg 8.1 via PyAV) and print what was decoded as JSON. A child
process, so blocking HTTP inside libavformat never stalls the test's event loop."""

from __future__ import annotations

import json
import sys
from typing import Any

import av


def decode(url: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with av.open(url) as container:
        for stream in container.streams:
            result[stream.type] = {
                "codec": stream.codec_context.name,
                "frames": 0,
                "width": getattr(stream.codec_context, "width", None),
                "height": getattr(stream.codec_context, "height", None),
                "sample_rate": getattr(stream.codec_context, "sample_rate", None),
                "first": None,
                "last": None,
            }
        for frame in container.decode(*container.streams):
            info = result[frame.__class__.__name__.removesuffix("Frame").lower()]
            info["frames"] += 1
            if frame.time is not None:
                info["first"] = frame.time if info["first"] is None else info["first"]
                info["last"] = frame.time
    for info in result.values():
        info["seconds"] = (info["last"] or 0.0) - (info["first"] or 0.0)
    return result


if __name__ == "__main__":
    print(json.dumps(decode(sys.argv[1])))
