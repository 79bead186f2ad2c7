"""HTTP plumbing shared by every role: embedded uvicorn servers and JSON errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Generator, Sequence
from typing import Any

import httptools
import uvicorn
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from meshcast.bodies import BodyError, BodyGuard, BodyRule
from meshcast.bodies import BodyTooLarge as BodyTooLarge  # handlers import these from here
from meshcast.bodies import read_body as read_body
from meshcast.config import HttpLimits
from meshcast.refused import Refused
from meshcast.signing import SignatureError, verify_object

log = logging.getLogger(__name__)


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


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "-"


def json_error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_error(exc.status_code, exc.detail, path=request.url.path)


async def refused_handler(request: Request, exc: Exception) -> Response:
    """A ``Refused`` (a body over its limit, a bad JSON body, …) that a handler let through."""
    assert isinstance(exc, Refused)
    return json_error(exc.code, exc.reason, path=request.url.path)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    HTTPException: http_exception_handler,
    Refused: refused_handler,
}


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


# Hardening limits shared by every HTTP listener (origin, edges, transcoder nodes).
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
# Paths that keep answering above the connection limit (from the reserve): health checks,
# metrics and playback must not be starved by API or event-stream clients.
RESERVED_PREFIXES: tuple[bytes, ...] = (b"/healthz", b"/metrics", b"/live/", b"/vod/")


class HeadTooLarge(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, hardened:
    - a deadline for a request's head: uvicorn's keep-alive timer is reset by every byte
      received, so a slowloris client sending one header byte a second would hold its
      connection forever. The deadline runs from the connection (or the end of the last
      request) to the end of the headers, whatever trickles in;
    - head size and header count limits, checked as bytes arrive (httptools itself buffers
      a header line of any length): 431 (414 for the request target) with a JSON reason;
    - a per-address connection limit (further connections are closed at once) and a
      reserve of connections above the global limit for health checks, metrics and
      media (503 for the rest)."""

    header_timeout = HEADER_TIMEOUT_S
    limits = HttpLimits()
    _deadline: asyncio.TimerHandle | None = None
    _head_left: int | None = None
    _heads_done = 0

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
        self._head_left = self.limits.max_head_bytes
        if self.client is not None:
            host = self.client[0]
            same = sum(
                1
                for c in self.connections
                if (peer := getattr(c, "client", None)) is not None and peer[0] == host
            )
            if same > self.limits.max_per_address:
                # Closed at once: answering each of a flood of connections would cost
                # the event loop what the limit is there to save.
                if same == self.limits.max_per_address + 1:
                    log.warning(
                        "%s: more than %d connections open; closing new ones",
                        host,
                        self.limits.max_per_address,
                    )
                self.transport.close()
                return
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self._feed(data)
        except HeadTooLarge as exc:
            self._refuse_head(exc)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._refuse_head(exc.__context__)
                return
            log.info("closing %s: invalid HTTP request (%s)", self._who()[0], exc)
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _feed(self, data: bytes) -> None:
        left = self._head_left
        if left is None or len(data) <= left:
            if left is not None:
                self._head_left = left - len(data)
            self.parser.feed_data(data)
            return
        # More than the head may still take: the head must end within what fits.
        heads = self._heads_done
        self._head_left = 0
        self.parser.feed_data(data[:left])
        if self._heads_done == heads:
            raise HeadTooLarge(431, f"request head larger than {self.limits.max_head_bytes} bytes")
        self._feed(data[left:])

    def _refuse_head(self, exc: HeadTooLarge) -> None:
        log.info("refusing %s: %s", self._who()[0], exc.reason)
        body = json.dumps({"error": exc.reason, "status": exc.status}).encode()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[exc.status],
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def _check_head(self) -> None:
        """Line and count limits, once the head is complete (the head budget in ``_feed``
        already bounds what httptools buffered meanwhile): one loop per request instead
        of a check per header callback."""
        limits = self.limits
        if len(self.url) > limits.max_header_line:
            raise HeadTooLarge(414, f"request target longer than {limits.max_header_line} bytes")
        if len(self.headers) > limits.max_headers:
            raise HeadTooLarge(431, f"more than {limits.max_headers} header fields")
        for name, value in self.headers:
            if len(name) + len(value) + 2 > limits.max_header_line:
                raise HeadTooLarge(431, f"header line longer than {limits.max_header_line} bytes")

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_left = None
        self._heads_done += 1
        self._check_head()
        limits = self.limits
        reserved = self.url.startswith(RESERVED_PREFIXES)
        self.limit_concurrency = limits.max_connections + (limits.reserve if reserved else 0)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_left = self.limits.max_head_bytes

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
    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        name: str,
        limits: HttpLimits | None = None,
        body_rules: Sequence[BodyRule] = (),
    ) -> None:
        limits = limits or HttpLimits()
        config = uvicorn.Config(
            BodyGuard(app, body_rules),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            # Above this many connections + tasks uvicorn answers 503 at once (the
            # protocol lowers it per request: the reserve is for RESERVED_PREFIXES).
            limit_concurrency=limits.max_connections + limits.reserve,
            timeout_keep_alive=KEEP_ALIVE_S,
            h11_max_incomplete_event_size=limits.max_head_bytes,
            http=type("MeshcastHttp", (HeaderDeadlineProtocol,), {"limits": limits}),
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
    except BodyError as exc:
        return json_error(exc.code, exc.reason)
    except (ValueError, RecursionError):
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
