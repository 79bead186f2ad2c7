"""Request bodies, bounded: every body has a size limit checked before it is read (the
declared Content-Length first, then the bytes as they stream in) and a read deadline.

Two layers, so that no route can forget:
- ``BodyGuard`` wraps every HTTP server's app (``meshcast.http.HttpService``): a declared
  length over the route's limit is answered 413 before the handler runs, and every
  ``receive()`` of a body counts bytes and runs against the deadline, whatever the handler
  does with it.
- Handlers read through ``read_body``/``read_json`` (small bodies, read whole) or
  ``stream_body`` (uploads, processed chunk by chunk), each with the limit of what it
  expects.

The deadline of a small body is fixed (``BODY_DEADLINE_S``); a large body by design (an
upload) gets that long plus the time its bytes take at ``min_rate``: a client that keeps
up any reasonable rate finishes, a client dribbling bytes to hold a connection does not.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshcast.refused import Refused

# Any route not listed with a larger limit: JSON APIs, SDP offers, signed messages.
DEFAULT_BODY_LIMIT: Final = 1024 * 1024
BODY_DEADLINE_S: Final = 10.0
# Uploads: 64 kB/s is a slow mobile uplink; a client below it for long is holding a slot.
UPLOAD_MIN_RATE: Final = 64 * 1024


class BodyError(Refused):
    """A body refused while it was read; ``code`` is the HTTP status."""


class BodyTooLarge(BodyError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body larger than {limit} bytes")
        self.limit = limit


class BodyTimeout(BodyError, TimeoutError):
    def __init__(self, seconds: float) -> None:
        BodyError.__init__(self, 408, f"body not received within {seconds:.0f} s")


class BadLength(BodyError):
    def __init__(self, value: str) -> None:
        super().__init__(400, f"invalid Content-Length {value[:32]!r}")


def declared_length(value: str | None) -> int | None:
    """The Content-Length a request declares (None: none, e.g. chunked); BadLength when it
    is anything but a plain decimal number."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise BadLength(value)
    return int(text)


@dataclass(frozen=True, slots=True)
class BodyRule:
    """Requests whose path starts with ``prefix`` may carry up to ``max_bytes``; with
    ``min_rate`` (bytes/s) their deadline grows with the bytes received."""

    prefix: str
    max_bytes: int
    min_rate: float = 0.0


class _Budget:
    """Byte count and deadline of one body, shared by the guard and the handler helpers."""

    __slots__ = ("deadline_s", "limit", "min_rate", "received", "started")

    def __init__(self, limit: int, deadline_s: float, min_rate: float) -> None:
        self.limit = limit
        self.deadline_s = deadline_s
        self.min_rate = min_rate
        self.received = 0
        self.started: float | None = None

    def remaining(self, now: float) -> float:
        if self.started is None:
            self.started = now
        allowed = self.deadline_s
        if self.min_rate > 0:
            allowed += self.received / self.min_rate
        return self.started + allowed - now

    def count(self, n: int) -> None:
        self.received += n
        if self.received > self.limit:
            raise BodyTooLarge(self.limit)

    def allowed_s(self) -> float:
        extra = self.received / self.min_rate if self.min_rate > 0 else 0.0
        return self.deadline_s + extra


def _guarded(receive: Receive, budget: _Budget) -> Receive:
    done = False

    async def guarded() -> Message:
        nonlocal done
        if done:
            # The body is complete: what follows is waiting for a disconnect (streaming
            # responses listen for it), which has no deadline.
            return await receive()
        left = budget.remaining(time.monotonic())
        if left <= 0:
            raise BodyTimeout(budget.allowed_s())
        try:
            # asyncio.timeout, not wait_for: no task per receive() on the normal path.
            async with asyncio.timeout(left):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(budget.allowed_s()) from None
        if message["type"] == "http.request":
            budget.count(len(message.get("body", b"")))
            done = not message.get("more_body", False)
        else:
            done = True
        return message

    return guarded


class BodyGuard:
    """ASGI middleware: the per-route body limits and deadlines of one HTTP server."""

    def __init__(
        self,
        app: ASGIApp,
        rules: Sequence[BodyRule] = (),
        default_limit: int = DEFAULT_BODY_LIMIT,
        deadline_s: float = BODY_DEADLINE_S,
    ) -> None:
        self.app = app
        # Longest prefix first, so /api/vod/ID/upload can differ from /api/.
        self.rules = sorted(rules, key=lambda r: -len(r.prefix))
        self.default = BodyRule("", default_limit)
        self.deadline_s = deadline_s

    def rule(self, path: str) -> BodyRule:
        return next((r for r in self.rules if path.startswith(r.prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if length is None and not chunked:
            await self.app(scope, receive, send)  # no body (most requests): nothing to guard
            return
        rule = self.rule(scope["path"])
        try:
            declared = declared_length(None if length is None else length.decode("latin-1"))
            if declared is not None and declared > rule.max_bytes:
                raise BodyTooLarge(rule.max_bytes)
        except BodyError as exc:
            await _refuse(send, exc)
            return
        if declared == 0:
            await self.app(scope, receive, send)
            return
        budget = _Budget(rule.max_bytes, self.deadline_s, rule.min_rate)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, _guarded(receive, budget), tracked)
        except BodyError as exc:
            if started:
                raise
            await _refuse(send, exc)


async def _refuse(send: Send, exc: BodyError) -> None:
    body = json.dumps({"error": exc.reason, "status": exc.code}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": exc.code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is unread: never parse it as a next request.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _budget(request: Request, limit: int, deadline_s: float, min_rate: float) -> _Budget:
    budget = _Budget(limit, deadline_s, min_rate)
    declared = declared_length(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit)
    return budget


async def stream_body(
    request: Request,
    limit: int,
    deadline_s: float = BODY_DEADLINE_S,
    min_rate: float = UPLOAD_MIN_RATE,
) -> AsyncIterator[bytes]:
    """The body chunk by chunk, for what is large by design (uploads): at most ``limit``
    bytes (the declared length is checked before the first byte is read), within
    ``deadline_s`` plus the time the bytes take at ``min_rate``."""
    budget = _budget(request, limit, deadline_s, min_rate)
    chunks = request.stream().__aiter__()
    while True:
        left = budget.remaining(time.monotonic())
        if left <= 0:
            raise BodyTimeout(budget.allowed_s())
        try:
            async with asyncio.timeout(left):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTimeout(budget.allowed_s()) from None
        budget.count(len(chunk))
        if chunk:
            yield chunk


async def read_body(request: Request, limit: int, deadline_s: float = BODY_DEADLINE_S) -> bytes:
    """A small body whole: at most ``limit`` bytes (checked before reading), read within
    ``deadline_s`` seconds in all (a client dribbling its body holds a connection and a
    task: bound both)."""
    budget = _budget(request, limit, deadline_s, 0.0)
    body = bytearray()
    try:
        # One deadline for the whole read (the handler does nothing else meanwhile).
        async with asyncio.timeout(deadline_s):
            async for chunk in request.stream():
                budget.count(len(chunk))
                body += chunk
    except TimeoutError:
        raise BodyTimeout(deadline_s) from None
    return bytes(body)


async def read_json(
    request: Request, limit: int, what: str = "JSON", deadline_s: float = BODY_DEADLINE_S
) -> Any:
    """A small JSON body, parsed; Refused (413, 408, 400) says why not."""
    raw = await read_body(request, limit, deadline_s)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise Refused(400, f"body is not {what}: {reason}") from None
