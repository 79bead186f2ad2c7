"""Concurrent viewers of live streams, counted where playback requests arrive (every edge,
and the origin for viewers straight on it) and summed on the origin.

A viewer is a session: its playback token when it has one, else its address and user
agent (hashed: no address is kept). A session counts while it requested a playlist or a
segment of the stream in the last ``SESSION_WINDOW`` seconds (players reload a live
playlist every segment, so 30 s spans many requests). No I/O here: callers pass the
clock, so tests move time instead of sleeping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

from meshcast.paths import MediaPath

SESSION_WINDOW: Final = 30.0
# Edges report their counts this often; a report older than REPORT_TTL is dropped (an
# edge that stopped or lost the origin stops counting).
REPORT_INTERVAL: Final = 5.0
REPORT_TTL: Final = 3 * REPORT_INTERVAL
# Bounds on what one edge may claim in a report (counts are edge claims, see docs).
MAX_REPORT_STREAMS: Final = 1000
# Reporting edges the origin keeps at once (each process of an edge is one).
MAX_REPORTERS: Final = 256
MAX_REPORT_VIEWERS: Final = 10_000_000
MAX_SESSIONS: Final = 500_000


def is_viewing(path: MediaPath) -> bool:
    """Requests that mean someone watches: live playlists and media (not a poster on a
    page that lists streams)."""
    return path.kind == "live" and path.suffix != ".jpg"


def viewer_id(token: str | None, address: str, agent: str) -> str:
    source = f"t:{token}" if token else f"a:{address}\n{agent}"
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@dataclass
class ViewerCounter:
    """Sessions per stream over a sliding window; memory bounded by ``max_sessions``."""

    window: float = SESSION_WINDOW
    max_sessions: int = MAX_SESSIONS
    # Per stream: viewer -> last request time, oldest first (dicts keep insertion order).
    _sessions: dict[str, dict[str, float]] = field(default_factory=dict)
    _total: int = 0

    def seen(self, stream: str, viewer: str, now: float) -> None:
        sessions = self._sessions.setdefault(stream, {})
        if sessions.pop(viewer, None) is None:
            if self._total >= self.max_sessions:
                self._expire(now)
                if self._total >= self.max_sessions:
                    return  # full of live sessions: new ones are not counted
            self._total += 1
            sessions = self._sessions.setdefault(stream, sessions)  # expiry may drop it
        sessions[viewer] = now

    def _expire(self, now: float) -> None:
        cutoff = now - self.window
        for stream in list(self._sessions):
            sessions = self._sessions[stream]
            while sessions:
                viewer, last = next(iter(sessions.items()))
                if last >= cutoff:
                    break
                del sessions[viewer]
                self._total -= 1
            if not sessions:
                del self._sessions[stream]

    def counts(self, now: float) -> dict[str, int]:
        self._expire(now)
        # Exact even if a clock step put a late time before an early one (expiry above
        # stops at the first recent session).
        cutoff = now - self.window
        counts = {s: sum(t >= cutoff for t in v.values()) for s, v in self._sessions.items()}
        return {stream: n for stream, n in counts.items() if n}


@dataclass
class StreamViewers:
    """One publication's audience on the origin: now, peak, and watch time."""

    started_at: float
    current: int = 0
    peak: int = 0
    watch_seconds: float = 0.0
    updated: float = 0.0

    def update(self, count: int, now: float) -> None:
        if self.updated:
            # Viewer-seconds: the count held since the last update.
            self.watch_seconds += self.current * max(0.0, now - self.updated)
        self.current = count
        self.peak = max(self.peak, count)
        self.updated = now

    def to_json(self) -> dict[str, float | int]:
        return {
            "viewers": self.current,
            "peak_viewers": self.peak,
            "watch_seconds": round(self.watch_seconds, 1),
        }


class ReportError(ValueError):
    """A malformed viewer report; the message says what is wrong."""


def parse_report(body: object) -> tuple[str, dict[str, int]]:
    """``{"edge": ID, "streams": {NAME: COUNT}}`` -> (edge id, counts)."""
    if not isinstance(body, dict):
        raise ReportError("body must be a JSON object")
    edge = body.get("edge")
    streams = body.get("streams")
    if not isinstance(edge, str) or not 0 < len(edge) <= 256:
        raise ReportError("'edge' must be a string of 1-256 characters")
    if not isinstance(streams, dict) or len(streams) > MAX_REPORT_STREAMS:
        raise ReportError(f"'streams' must be an object of at most {MAX_REPORT_STREAMS} streams")
    counts: dict[str, int] = {}
    for name, count in streams.items():
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 64
            or not isinstance(count, int)
            or isinstance(count, bool)
            or not 0 <= count <= MAX_REPORT_VIEWERS
        ):
            raise ReportError("'streams' maps stream names to viewer counts (integers >= 0)")
        counts[name] = count
    return edge, counts
