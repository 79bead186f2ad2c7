"""HTTP plumbing shared by every role: embedded uvicorn servers and JSON errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from meshcast.signing import SignatureError, verify_object

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


def error_reason(body: bytes) -> str:
    """Why a peer refused: the ``error`` of a JSON error body (``json_error``), else the
    start of the body."""
    try:
        parsed: Any = json.loads(body)
        if isinstance(parsed, dict) and "error" in parsed:
            return str(parsed["error"])[:200]
    except ValueError:
        pass
    return body[:200].decode(errors="replace")


async def read_body(request: Request, limit: int, deadline_s: float = 10.0) -> bytes:
    """A request body of at most ``limit`` bytes, read within ``deadline_s`` seconds (a client
    dribbling its body holds a connection and a task: bound both)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    body = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise BodyTooLarge(f"body larger than {limit} bytes")

    await asyncio.wait_for(collect(), deadline_s)
    return bytes(body)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "-"


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
    return Middleware(CORSMiddleware, **_cors_options(extra_methods, extra_expose))


def _cors_options(extra_methods: Sequence[str], extra_expose: Sequence[str]) -> dict[str, Any]:
    return dict(
        allow_origins=["*"],
        allow_methods=["GET", "HEAD", "OPTIONS", *extra_methods],
        allow_headers=["Range", "If-None-Match", "Authorization", "Content-Type"],
        expose_headers=["X-Cache", "Age", "Content-Length", "Content-Range", "ETag", *extra_expose],
        max_age=86400,
    )


# Hardening limits shared by every HTTP listener (origin and edges).
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024
MAX_CONCURRENCY = 1024


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's protocol with a deadline for a request's head: uvicorn's keep-alive timer
    is reset by every byte received, so a slowloris client sending one header byte a
    second would hold its connection forever. The deadline runs from the connection (or
    the first byte of the next request) to the end of the headers, whatever trickles in."""

    header_timeout = HEADER_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info(
                "closing %s: request head not complete in %.0f s", self.client, self.header_timeout
            )
            self.transport.close()

    def _who(self) -> tuple[str, float]:
        return (f"{self.client[0]}:{self.client[1]}" if self.client else "?", self.header_timeout)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class CorsOnly:
    """CORS (as ``cors()``) for the paths under ``prefixes`` only: playback and publishing
    are called from players on other origins, admin APIs must not be."""

    def __init__(
        self,
        app: ASGIApp,
        prefixes: Sequence[str],
        extra_methods: Sequence[str] = (),
        extra_expose: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.prefixes = tuple(prefixes)
        self.with_cors: ASGIApp = CORSMiddleware(app, **_cors_options(extra_methods, extra_expose))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            await self.with_cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


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
            # Above this many connections + tasks uvicorn answers 503 at once.
            limit_concurrency=MAX_CONCURRENCY,
            timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            http=HeaderDeadlineProtocol,
            # No "Server: uvicorn": version banners only help scanners.
            server_header=False,
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


async def read_signed(
    request: Request, key: str, limit: int, what: str
) -> dict[str, Any] | Response:
    """The body of a ``{"body": {...}, "sig": ...}`` message signed by ``key`` (a storage
    challenge or an inference order from the coordinator), read within ``limit`` bytes; an
    error response (413, 400, 401) otherwise."""
    try:
        envelope = json.loads(await read_body(request, limit))
    except BodyTooLarge as exc:
        return json_error(413, str(exc))
    except (ValueError, RecursionError, TimeoutError):
        return json_error(400, f"body is not a JSON {what}")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("sig"), str):
        return json_error(400, "expected {'body': {...}, 'sig': ...}")
    body = envelope.get("body")
    try:
        verify_object(key, body, envelope["sig"])
    except SignatureError as exc:
        return json_error(401, f"{what} signature: {exc}")
    except ValueError:  # JSON that has no canonical form (NaN)
        return json_error(400, f"body is not a JSON {what}")
    if not isinstance(body, dict):
        return json_error(400, "expected {'body': {...}, 'sig': ...}")
    return body
