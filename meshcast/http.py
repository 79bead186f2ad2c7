"""HTTP plumbing shared by every role: embedded uvicorn servers and JSON errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


def json_error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_error(exc.status_code, exc.detail, path=request.url.path)


EXCEPTION_HANDLERS: dict[Any, Any] = {HTTPException: http_exception_handler}


def cors(extra_methods: Sequence[str] = (), extra_expose: Sequence[str] = ()) -> Middleware:
    """Players and dApps fetch media from other origins: allow reads from anywhere and
    let them see our cache and range headers. The origin adds WHIP's methods and headers
    (browsers publish from other origins too)."""
    return Middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "HEAD", "OPTIONS", *extra_methods],
        allow_headers=["Range", "If-None-Match", "Authorization", "Content-Type"],
        expose_headers=["X-Cache", "Age", "Content-Length", "Content-Range", "ETag", *extra_expose],
        max_age=86400,
    )


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to our process supervisor, so several
    servers (origin and edges) can share one event loop and shut down together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpService:
    def __init__(self, app: ASGIApp, host: str, port: int, name: str) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            limit_concurrency=1024,
        )
        self.name = name
        self.server = EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        sockets = self.server.servers[0].sockets
        port: int = sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._task = asyncio.create_task(self.server.serve(), name=f"http-{self.name}")
        while not self.server.started:
            if self._task.done():
                self._task.result()  # re-raise the bind error
                raise RuntimeError(f"{self.name}: HTTP server exited during start-up")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
