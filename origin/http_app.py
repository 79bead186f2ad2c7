"""Origin HTTP app: health, metrics, stream API and the event stream (SSE)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshcast.events import EventBus
from meshcast.http import EXCEPTION_HANDLERS, json_error
from meshcast.metrics import metrics_endpoint
from origin.registry import StreamRegistry

SSE_HEARTBEAT_S = 15.0


def create_app(registry: StreamRegistry, bus: EventBus, metrics: CollectorRegistry) -> Starlette:
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
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
