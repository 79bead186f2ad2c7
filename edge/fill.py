"""Single-flight cache fill: one upstream fetch per object, however many viewers ask.

The fill runs as its own task, so a slow or vanished viewer never holds it; every waiter
reads the shared body as it arrives. A body shorter than announced fails the fill (and its
waiters); nothing truncated is ever cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

log = logging.getLogger(__name__)


class FillError(Exception):
    """The upstream could not deliver; ``status`` is what the viewer should get."""

    def __init__(self, status: int, message: str, answered: bool = False) -> None:
        super().__init__(message)
        self.status = status
        # The upstream was reachable and said no (e.g. a peer whose origin fetch failed):
        # not a reason to take it out of the ring.
        self.answered = answered


@dataclass(frozen=True, slots=True)
class Upstream:
    base_url: str
    is_peer: bool


@dataclass(eq=False)
class Fill:
    key: str
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    source: Upstream | None = None
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0
    error: FillError | None = None
    finished: bool = False
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_headers(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.status is not None or self.finished)
        if self.status is None and self.error is not None:
            raise self.error

    async def wait_done(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.finished)
        if self.error is not None:
            raise self.error

    async def wait_done_quietly(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.finished)

    async def stream(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises FillError if the fill fails part-way."""
        index = 0
        while True:
            async with self._changed:
                seen = index
                await self._changed.wait_for(lambda: seen < len(self.chunks) or self.finished)  # noqa: B023
                pending = self.chunks[index:]
                done, error = self.finished, self.error
            for chunk in pending:
                yield chunk
            index += len(pending)
            if done and index >= len(self.chunks):
                if error is not None:
                    raise error
                return

    async def run(
        self,
        client: httpx.AsyncClient,
        upstreams: list[Upstream],
        headers: dict[str, str],
        on_upstream_failure: Callable[[Upstream, str], None],
    ) -> None:
        last_error = FillError(502, "no upstream")
        try:
            for index, upstream in enumerate(upstreams):
                try:
                    await self._fetch(client, upstream, headers, last=index == len(upstreams) - 1)
                    return
                except FillError as exc:
                    last_error = exc
                    # Only a failure before the first byte may move to the next upstream:
                    # waiters may already hold part of this body.
                    if self.received:
                        raise
                    if not exc.answered:
                        on_upstream_failure(upstream, str(exc))
            raise last_error
        except FillError as exc:
            self.error = exc
        except Exception as exc:  # never leave waiters hanging on a bug
            log.exception("edge fill of %s failed", self.key)
            self.error = FillError(502, f"fill failed: {exc}")
        finally:
            self.finished = True
            await self._notify()

    async def _fetch(
        self,
        client: httpx.AsyncClient,
        upstream: Upstream,
        headers: dict[str, str],
        last: bool = True,
    ) -> None:
        timeout = httpx.Timeout(10.0, connect=1.0 if upstream.is_peer else 3.0)
        url = upstream.base_url + self.key
        try:
            async with client.stream("GET", url, headers=headers, timeout=timeout) as response:
                # A peer's refusal is not the last word while the origin is still to ask: a
                # community node that lies (or lags) must not black-hole what it owns.
                refused = upstream.is_peer and not last and response.status_code >= 400
                if response.status_code >= 500 or refused:
                    raise FillError(
                        502,
                        f"upstream {upstream.base_url} answered {response.status_code}",
                        answered=True,
                    )
                expected = response.headers.get("content-length")
                self.source = upstream
                self.status = response.status_code
                self.headers = dict(response.headers)
                await self._notify()
                async for chunk in response.aiter_raw():
                    self.chunks.append(chunk)
                    self.received += len(chunk)
                    await self._notify()
                if expected is not None and int(expected) != self.received:
                    raise FillError(
                        502, f"upstream body truncated ({self.received} of {expected} bytes)"
                    )
        except httpx.TimeoutException as exc:
            raise FillError(504, f"upstream {upstream.base_url} timed out") from exc
        except httpx.HTTPError as exc:
            raise FillError(502, f"upstream {upstream.base_url} unreachable: {exc}") from exc
