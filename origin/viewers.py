"""Viewer counts on the origin: the edges' reports (``POST /api/viewers``) plus the
viewers playing straight from the origin, per live stream: now, peak, watch time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from meshcast.http import BodyTooLarge, client_ip, json_error, read_body
from meshcast.paths import parse_media_path
from meshcast.tokens import TOKEN_HEADER, token_from_query
from meshcast.viewers import (
    MAX_REPORTERS,
    REPORT_INTERVAL,
    REPORT_TTL,
    ReportError,
    StreamViewers,
    ViewerCounter,
    is_viewing,
    parse_report,
    viewer_id,
)
from origin.registry import StreamRegistry

log = logging.getLogger(__name__)

MAX_REPORT_BYTES: Final = 512 * 1024
PEER_HEADER: Final = "x-meshcast-peer"


class ViewerStats:
    def __init__(self, registry: StreamRegistry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        self.local = ViewerCounter()
        # Edge instance -> (received at, counts per stream).
        self.reports: dict[str, tuple[float, dict[str, int]]] = {}
        self.streams: dict[str, StreamViewers] = {}
        self._task: asyncio.Task[None] | None = None

    # ---- inputs ---------------------------------------------------------------------

    def on_live_request(self, request: Request) -> None:
        """A successful /live/ request on the origin: a viewer, unless an edge fetching."""
        if PEER_HEADER in request.headers:
            return
        media = parse_media_path(request.url.path)
        if media is None or not is_viewing(media):
            return
        token = token_from_query(request.url.query) or request.headers.get(TOKEN_HEADER)
        viewer = viewer_id(token, client_ip(request), request.headers.get("user-agent", ""))
        self.local.seen(media.name, viewer, self.clock())

    def report(self, edge: str, counts: dict[str, int]) -> bool:
        """Keep an edge's counts of live streams; False when too many edges report."""
        now = self.clock()
        if edge not in self.reports and len(self.reports) >= MAX_REPORTERS:
            self._expire(now)
            if len(self.reports) >= MAX_REPORTERS:
                return False
        live = {s.name for s in self.registry.live_streams()}
        self.reports[edge] = (now, {n: c for n, c in counts.items() if n in live})
        return True

    def _expire(self, now: float) -> None:
        for edge, (at, _) in list(self.reports.items()):
            if now - at > REPORT_TTL:
                del self.reports[edge]

    # ---- aggregation ----------------------------------------------------------------

    def current(self, now: float) -> dict[str, int]:
        totals = dict(self.local.counts(now))
        self._expire(now)
        for _, counts in self.reports.values():
            for name, count in counts.items():
                totals[name] = totals.get(name, 0) + count
        return totals

    def tick(self) -> None:
        """Fold the current counts into every live stream's peak and watch time."""
        now = self.clock()
        totals = self.current(now)
        live = {s.name: s for s in self.registry.live_streams()}
        for name, stream in live.items():
            stats = self.streams.get(name)
            if stats is None or stats.started_at != stream.started_at:
                stats = self.streams[name] = StreamViewers(stream.started_at)
            stats.update(totals.get(name, 0), now)
        for name, stats in self.streams.items():
            if name not in live and stats.current:
                stats.update(0, now)  # ended: its audience is history

    def stream_json(self, name: str) -> dict[str, object]:
        stats = self.streams.get(name)
        stream = self.registry.get(name)
        if stats is None or stream is None or stats.started_at != stream.started_at:
            return {"viewers": 0, "peak_viewers": 0, "watch_seconds": 0.0}
        return dict(stats.to_json())

    # ---- lifecycle and API ----------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="viewers")

    async def _run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(REPORT_INTERVAL / 5)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def post_report(self, request: Request) -> Response:
        try:
            raw = await read_body(request, MAX_REPORT_BYTES)
        except BodyTooLarge as exc:
            return json_error(413, str(exc))
        except TimeoutError:
            return json_error(408, "request body too slow")
        try:
            edge, counts = parse_report(json.loads(raw))
        except (ValueError, RecursionError) as exc:
            message = str(exc) if isinstance(exc, ReportError) else "body must be JSON"
            return json_error(400, message)
        if not self.report(edge, counts):
            return json_error(429, f"more than {MAX_REPORTERS} edges are reporting")
        self.tick()
        return Response(status_code=204)

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/viewers", self.post_report, methods=["POST"])]
