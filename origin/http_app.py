"""Origin HTTP app: health, metrics, stream API and the event stream (SSE)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshcast.events import EventBus
from meshcast.http import EXCEPTION_HANDLERS, json_error
from meshcast.metrics import metrics_endpoint
from origin.registry import StreamRegistry

SSE_HEARTBEAT_S = 15.0


# Media files under /live/NAME/: names are fixed by the packager, everything else is 404
# (this is also the path-traversal guard: no user-supplied path reaches the filesystem).
_LIVE_FILE = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})/"
    r"(?:(?P<top>master\.m3u8|manifest\.mpd)|"
    r"(?P<rendition>[0-9]{2,4}p|audio|source)/(?P<file>index\.m3u8|init\.mp4|[0-9]{1,12}\.m4s))"
)
_CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
}
IMMUTABLE = "public, max-age=31536000, immutable"


def create_app(
    registry: StreamRegistry, bus: EventBus, metrics: CollectorRegistry, data_dir: Path
) -> Starlette:
    live_root = data_dir / "live"

    async def live_file(request: Request) -> Response:
        match = _LIVE_FILE.fullmatch(request.path_params["path"])
        if match is None:
            return json_error(404, "not found", path=request.url.path)
        name = match["name"]
        relative = match["top"] or f"{match['rendition']}/{match['file']}"
        path = live_root / name / relative
        if not path.is_file():
            stream = registry.get(name)
            reason = "stream not live" if stream is None else "not available (yet)"
            return json_error(404, reason, path=request.url.path)
        suffix = path.suffix
        content_type = _CONTENT_TYPES[suffix]
        if match["rendition"] == "audio" and suffix in (".mp4", ".m4s"):
            content_type = "audio/mp4"
        if suffix in (".mp4", ".m4s"):
            cache = IMMUTABLE
        else:
            stream = registry.get(name)
            live = stream is not None and stream.live
            # Live manifests change every segment; ended ones only on a new publication.
            cache = "public, max-age=1" if live else "public, max-age=10"
        return FileResponse(path, media_type=content_type, headers={"Cache-Control": cache})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "role": "origin"})

    async def list_streams(request: Request) -> Response:
        return JSONResponse({"streams": [s.to_json() for s in registry.listing()]})

    async def get_stream(request: Request) -> Response:
        name = request.path_params["name"]
        stream = registry.get(name)
        if stream is None:
            return json_error(404, f"no stream named {name!r}")
        return JSONResponse(stream.to_json())

    async def event_stream(request: Request) -> Response:
        sub = bus.subscribe(maxsize=256)

        async def body() -> AsyncIterator[str]:
            try:
                yield ": meshcast events\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(sub.get(), SSE_HEARTBEAT_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    data = json.dumps(event.to_json())
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"
            finally:
                sub.close()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint(metrics)),
        Route("/api/streams", list_streams),
        Route("/api/streams/{name}", get_stream),
        Route("/api/events", event_stream),
        Route("/live/{path:path}", live_file, methods=["GET", "HEAD"]),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
