"""Edge HTTP app. For now a streaming pass-through to the origin (every response is a
MISS); caching, coalescing and the peer ring arrive with the edge issue."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from meshcast.config import EdgeConfig
from meshcast.http import EXCEPTION_HANDLERS, json_error
from meshcast.metrics import metrics_endpoint

log = logging.getLogger(__name__)

# Headers that describe the body and must reach the viewer unchanged.
_PASS_HEADERS = ("content-type", "content-length", "cache-control", "etag", "last-modified")


def create_app(config: EdgeConfig, metrics: CollectorRegistry | None = None) -> Starlette:
    metrics = metrics or CollectorRegistry()
    requests_total = Counter(
        "meshcast_edge_requests", "Edge requests by cache result", ["cache"], registry=metrics
    )
    origin_fetches = Counter(
        "meshcast_edge_origin_fetches", "Fetches from the origin", registry=metrics
    )
    client = httpx.AsyncClient(
        base_url=config.origin.rstrip("/"),
        timeout=httpx.Timeout(10.0, connect=3.0),
        limits=httpx.Limits(max_connections=256),
    )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "role": "edge", "origin": config.origin})

    async def proxy(request: Request) -> Response:
        path = request.url.path
        if not path.startswith(("/live/", "/vod/", "/player/")) and path != "/":
            return json_error(404, f"not found: {path}")
        origin_fetches.inc()
        upstream = client.build_request(request.method, path, params=request.query_params)
        try:
            response = await client.send(upstream, stream=True)
        except httpx.TimeoutException:
            requests_total.labels("MISS").inc()
            return json_error(504, "origin timed out", path=path)
        except httpx.HTTPError as exc:
            requests_total.labels("MISS").inc()
            log.warning("edge: origin fetch of %s failed: %s", path, exc)
            return json_error(502, "origin unreachable", path=path)
        requests_total.labels("MISS").inc()
        headers = {k: v for k, v in response.headers.items() if k in _PASS_HEADERS}
        headers["X-Cache"] = "MISS"

        async def body() -> AsyncIterator[bytes]:
            async for chunk in response.aiter_raw():
                yield chunk

        return StreamingResponse(
            body(),
            status_code=response.status_code,
            headers=headers,
            background=BackgroundTask(response.aclose),
        )

    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint(metrics)),
        Route("/{path:path}", proxy, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.state.client = client  # closed by the service that runs the app
    return app
