"""Every event of the system, with its payload type, and the in-process event bus (the
embedded default; ``meshcast/nats_bus.py`` carries the same events between hosts over
NATS; ``GET /api/events`` on the origin streams them as server-sent events).

Publishers send a payload dataclass (``bus.emit(VodReady(...))``): its fields are the
event's data. Subscribers read ``event.data`` defensively: over NATS an event comes from
another process, possibly another version.

Subscribers get a bounded queue each: a slow subscriber loses its oldest events (and the
loss is counted) instead of making publishers wait or memory grow.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, Literal

log = logging.getLogger(__name__)

# ---- event names ---------------------------------------------------------------------------

# The origin's stream registry: a publication started or ended.
STREAM_PUBLISHED: Final = "stream.published"
STREAM_ENDED: Final = "stream.ended"
# Membership: every edge announces itself periodically; "node.left" on a clean shutdown.
NODE_HEARTBEAT: Final = "node.heartbeat"
NODE_LEFT: Final = "node.left"
# Every transcoder node announces its ingest URL and load (origins pick the least loaded).
TRANSCODER_HEARTBEAT: Final = "transcoder.heartbeat"
# VOD jobs on the origin.
VOD_PROGRESS: Final = "vod.progress"
VOD_READY: Final = "vod.ready"
VOD_FAILED: Final = "vod.failed"
# The contributor network's coordinator accepted a node's usage receipt.
RECEIPT_ACCEPTED: Final = "receipt.accepted"
# The moderation edge plugin flagged a sample of a stream or VOD asset.
MODERATION_FLAGGED: Final = "moderation.flagged"
# Live recording (origin/recordings.py): a publication's recording began, could not begin
# (the owner's disk budget is full), became a VOD asset; a clip of one is ready.
RECORDING_STARTED: Final = "recording.started"
RECORDING_REFUSED: Final = "recording.refused"
RECORDING_READY: Final = "recording.ready"
CLIP_READY: Final = "clip.ready"


# ---- payloads --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventPayload:
    """The data of one event type (subclasses name it in ``TYPE``)."""

    TYPE: ClassVar[str]

    def data(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class StreamPublished(EventPayload):
    TYPE: ClassVar[str] = STREAM_PUBLISHED
    name: str
    protocol: str  # rtmp | whip | demo
    remote: str  # the publisher's address


@dataclass(frozen=True, slots=True)
class StreamEnded(EventPayload):
    TYPE: ClassVar[str] = STREAM_ENDED
    name: str
    reason: str
    video_frames: int
    audio_frames: int


@dataclass(frozen=True, slots=True)
class NodeHeartbeat(EventPayload):
    TYPE: ClassVar[str] = NODE_HEARTBEAT
    role: str  # edge
    url: str


@dataclass(frozen=True, slots=True)
class NodeLeft(EventPayload):
    TYPE: ClassVar[str] = NODE_LEFT
    role: str
    url: str


@dataclass(frozen=True, slots=True)
class TranscoderHeartbeat(EventPayload):
    TYPE: ClassVar[str] = TRANSCODER_HEARTBEAT
    url: str  # tcp://HOST:PORT, where origins send a stream's frames
    streams: int
    capacity: int


@dataclass(frozen=True, slots=True)
class VodProgress(EventPayload):
    TYPE: ClassVar[str] = VOD_PROGRESS
    id: str
    state: str
    progress: float  # percent


@dataclass(frozen=True, slots=True)
class VodReady(EventPayload):
    TYPE: ClassVar[str] = VOD_READY
    id: str
    renditions: list[str]
    duration: float


@dataclass(frozen=True, slots=True)
class VodFailed(EventPayload):
    TYPE: ClassVar[str] = VOD_FAILED
    id: str
    error: str


@dataclass(frozen=True, slots=True)
class ReceiptAccepted(EventPayload):
    TYPE: ClassVar[str] = RECEIPT_ACCEPTED
    node: str
    seq: int
    hash: str
    epoch: int
    late: bool  # arrived after its epoch closed: kept, never counted
    served: int  # bytes


@dataclass(frozen=True, slots=True)
class ModerationFlagged(EventPayload):
    TYPE: ClassVar[str] = MODERATION_FLAGGED
    kind: Literal["live", "vod"]
    name: str
    number: int  # the segment sampled
    media_time: float
    policy: str
    labels: list[str]
    scores: list[float]
    edge: str  # the edge that sampled it


@dataclass(frozen=True, slots=True)
class RecordingStarted(EventPayload):
    TYPE: ClassVar[str] = RECORDING_STARTED
    stream: str
    asset: str  # the VOD asset the publication is recorded into
    owner: str


@dataclass(frozen=True, slots=True)
class RecordingRefused(EventPayload):
    TYPE: ClassVar[str] = RECORDING_REFUSED
    stream: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecordingReady(EventPayload):
    TYPE: ClassVar[str] = RECORDING_READY
    stream: str
    asset: str | None  # None: nothing was recorded (no segment), no asset
    duration: float
    reason: str | None  # why it stopped early (the disk budget) or was discarded


@dataclass(frozen=True, slots=True)
class ClipReady(EventPayload):
    TYPE: ClassVar[str] = CLIP_READY
    stream: str
    asset: str
    source: str  # the recording it was cut from
    duration: float


# Every event type and its payload.
EVENTS: Final[dict[str, type[EventPayload]]] = {
    p.TYPE: p
    for p in (
        StreamPublished,
        StreamEnded,
        NodeHeartbeat,
        NodeLeft,
        TranscoderHeartbeat,
        VodProgress,
        VodReady,
        VodFailed,
        ReceiptAccepted,
        ModerationFlagged,
        RecordingStarted,
        RecordingRefused,
        RecordingReady,
        ClipReady,
    )
}

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

    def emit(self, payload: EventPayload) -> Event:
        """Publish one event of ``payload``'s type with its fields as the data."""
        return self.publish(payload.TYPE, **payload.data())

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
