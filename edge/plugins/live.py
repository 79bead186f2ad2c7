"""Live streams as seen by a plugin: which streams this edge owns, and their new segments.

Ownership: the peer ring's rendezvous owner of ``stream:NAME`` runs that stream's
inference, so the work is done once in the mesh; when the owner dies the ring moves the
key to a survivor, whose next :meth:`OwnedStreams.sync` starts the stream there.

New segments are learnt by polling the rendition playlist through the edge's own fill path
(as the prefetcher does): no per-segment event from the transcoder process is needed, and
the fetched segments warm the edge's cache for viewers instead of costing an extra fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from edge.plugins.host import EdgeHost

log = logging.getLogger(__name__)

_TAG: Final = re.compile(r"#(EXTINF|EXT-X-PROGRAM-DATE-TIME):([^\r\n,]*)")


def stream_key(name: str) -> str:
    return f"stream:{name}"


@dataclass(frozen=True, slots=True)
class PlaylistEntry:
    number: int
    duration: float
    program_date_time: str | None


@dataclass(frozen=True, slots=True)
class Playlist:
    entries: tuple[PlaylistEntry, ...]
    ended: bool
    target_duration: int


def parse_media_playlist(text: str) -> Playlist:
    entries: list[PlaylistEntry] = []
    duration, pdt = 0.0, None
    target = 2
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = int(line.partition(":")[2])
        elif (match := _TAG.match(line)) is not None:
            if match[1] == "EXTINF":
                duration = float(match[2])
            else:
                pdt = match[2] + line[match.end() :]
        elif line.endswith(".m4s") and line[:-4].isdigit():
            entries.append(PlaylistEntry(int(line[:-4]), duration, pdt))
            duration, pdt = 0.0, None
    return Playlist(tuple(entries), "#EXT-X-ENDLIST" in text, target)


class OwnedStreams:
    """Runs ``work(name)`` for every live stream this edge owns, one task per stream.

    Which streams are live comes from the origin's ``/api/streams`` (works with and without
    a bus)."""

    def __init__(self, edge: EdgeHost, work: Callable[[str], Awaitable[None]], label: str) -> None:
        self.edge = edge
        self.live: frozenset[str] = frozenset()
        self._work = work
        self._label = label
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._finished: set[str] = set()

    def owns(self, name: str) -> bool:
        return self.edge.ring.owner(stream_key(name)) == self.edge.self_url

    async def refresh(self) -> None:
        try:
            response = await self.edge.client.get(f"{self.edge.origin}/api/streams", timeout=2.0)
            if response.status_code == 200:
                streams = response.json().get("streams", [])
                self.live = frozenset(
                    s["name"] for s in streams if s.get("state") == "live" and "name" in s
                )
        except Exception as exc:  # an origin restart must not end the plugin
            log.debug("edge %s: stream listing failed: %s", self.edge.self_url, exc)

    def sync(self) -> None:
        live = self.live
        # A finished task (its playlist ended) is not restarted while the origin still
        # lists the stream as live; a new publication shows up after a non-live listing.
        self._finished &= live
        for name, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[name]
                self._finished.add(name)
            elif not self.owns(name):
                # Not on "not listed live": the task ends itself at the playlist's ENDLIST,
                # after the last segments, which come after the origin's state change.
                log.info("edge %s: %s of %s moves to another edge", self.edge.self_url,
                         self._label, name)  # fmt: skip
                task.cancel()
                del self.tasks[name]
        for name in live:
            if name not in self.tasks and name not in self._finished and self.owns(name):
                log.info("edge %s: %s of %s runs here", self.edge.self_url, self._label, name)
                self.tasks[name] = asyncio.create_task(
                    self._run(name), name=f"{self._label} {name}"
                )

    async def _run(self, name: str) -> None:
        try:
            await self._work(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("edge %s: %s of %s failed", self.edge.self_url, self._label, name)

    async def run(self, every: float = 1.0) -> None:
        while True:
            await self.refresh()
            self.sync()
            await asyncio.sleep(every)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()


async def follow(
    edge: EdgeHost,
    directory: str,
    poll_s: float = 0.5,
    backlog: int = 1,
    give_up_s: float = 30.0,
) -> AsyncIterator[tuple[PlaylistEntry, Playlist]]:
    """New segments of a live rendition (``/live/NAME/RENDITION/``) as they are listed,
    starting ``backlog`` segments behind the live edge; ends with the playlist's ENDLIST,
    or when the playlist is unavailable for ``give_up_s``."""
    last = -1
    loop = asyncio.get_running_loop()
    seen_at = loop.time()
    while True:
        body = await edge.fetch(f"{directory}index.m3u8", refresh=True)
        if body is None and loop.time() - seen_at > give_up_s:
            return
        if body is not None:
            seen_at = loop.time()
            playlist = parse_media_playlist(body.decode("utf-8", "replace"))
            if last < 0 and playlist.entries:
                last = playlist.entries[max(0, len(playlist.entries) - 1 - backlog)].number - 1
            for entry in playlist.entries:
                if entry.number > last:
                    last = entry.number
                    yield entry, playlist
            if playlist.ended:
                return
        await asyncio.sleep(poll_s)
