"""In-process event bus (the embedded default; ``meshcast/nats_bus.py`` carries the same
events between hosts over NATS).

Subscribers get a bounded queue each: a slow subscriber loses its oldest events (and the
loss is counted) instead of making publishers wait or memory grow.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

log = logging.getLogger(__name__)

STREAM_PUBLISHED: Final = "stream.published"
STREAM_ENDED: Final = "stream.ended"
# Membership: every edge announces itself periodically; "node.left" on a clean shutdown.
NODE_HEARTBEAT: Final = "node.heartbeat"
NODE_LEFT: Final = "node.left"
# Live recording (origin/recordings.py): a publication's recording began, could not begin
# (the owner's disk budget is full), became a VOD asset; a clip of one is ready.
RECORDING_STARTED: Final = "recording.started"
RECORDING_REFUSED: Final = "recording.refused"
RECORDING_READY: Final = "recording.ready"
CLIP_READY: Final = "clip.ready"

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: dict[str, Any]
    id: int = field(default_factory=lambda: next(_ids))
    ts: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "ts": self.ts, "data": self.data}


class Subscription:
    def __init__(self, bus: EventBus, types: frozenset[str] | None, maxsize: int) -> None:
        self._bus = bus
        self.types = types
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if self.types is not None and event.type not in self.types:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subscriptions.discard(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def publish(self, type: str, **data: Any) -> Event:
        event = Event(type, data)
        log.debug("event %s %s", type, data)
        self.deliver(event)
        return event

    def deliver(self, event: Event) -> None:
        """Hand an event to the local subscribers only (also used for remote events)."""
        for sub in list(self._subscriptions):
            sub.offer(event)

    async def start(self) -> None:
        """Nothing to connect in-process; remote backends override this."""

    async def close(self) -> None:
        pass

    def subscribe(self, types: Iterable[str] | None = None, maxsize: int = 1024) -> Subscription:
        sub = Subscription(self, frozenset(types) if types is not None else None, maxsize)
        self._subscriptions.add(sub)
        return sub
