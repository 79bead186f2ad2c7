"""The event bus over NATS: the same ``EventBus`` API, its events also published to and
received from ``meshcast.<type>`` subjects, so origins, transcoders and edges on many hosts
see one stream of events (stream published/ended, node membership, VOD progress, ...).

Why NATS and not our own protocol: reconnects, fan-out and (with JetStream) durable
replay are solved problems there. Local subscribers never wait on the network: publishing
enqueues for a sender task (bounded; the oldest is dropped and counted if NATS is away for
long), and the process starts and keeps working while the NATS server is down, with the
client reconnecting and resubscribing on its own. Event types under ``DURABLE_PREFIXES``
go through JetStream (stored, acknowledged) when the server has it enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from meshcast.events import Event, EventBus

log = logging.getLogger(__name__)

SUBJECT_PREFIX: Final = "meshcast."
DURABLE_PREFIXES: Final = ("vod.", "receipt.")
JETSTREAM_NAME: Final = "MESHCAST"


class NatsBus(EventBus):
    def __init__(self, url: str, name: str, outbox: int = 10_000) -> None:
        super().__init__()
        self.url = url
        self.name = name
        self._outbox: asyncio.Queue[Event] = asyncio.Queue(outbox)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.dropped = 0
        self.received = 0
        self._closing = False

    def publish(self, type: str, **data: Any) -> Event:
        event = super().publish(type, **data)
        if self._outbox.full():
            self._outbox.get_nowait()
            self.dropped += 1
        self._outbox.put_nowait(event)
        return event

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"nats bus {self.name}")

    async def _connect(self) -> Client:
        delay = 0.5
        while True:
            try:
                return await nats.connect(
                    self.url,
                    name=self.name,
                    no_echo=True,  # our own events are already delivered locally
                    connect_timeout=2,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            except Exception as exc:  # NoServersError, OSError, timeouts
                log.warning("bus: cannot reach NATS at %s (%s); retrying", self.url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _run(self) -> None:
        nc = self._nc = await self._connect()
        await nc.subscribe(f"{SUBJECT_PREFIX}>", cb=self._on_message)
        self._js = await self._jetstream(nc)
        self.connected.set()
        log.info("bus: connected to NATS %s as %s", self.url, self.name)
        while True:
            event = await self._outbox.get()
            payload = json.dumps(event.to_json()).encode()
            subject = SUBJECT_PREFIX + event.type
            try:
                if self._js is not None and event.type.startswith(DURABLE_PREFIXES):
                    await self._js.publish(subject, payload, timeout=2)
                else:
                    await nc.publish(subject, payload)
            except Exception as exc:
                # The client buffers while reconnecting; this is a hard failure (buffer
                # full, JetStream ack timeout): the event is lost for remote nodes.
                self.dropped += 1
                log.warning("bus: could not publish %s: %s", event.type, exc)

    async def _jetstream(self, nc: Client) -> JetStreamContext | None:
        js = nc.jetstream()
        subjects = [f"{SUBJECT_PREFIX}{p}>" for p in DURABLE_PREFIXES]
        # A server that has just started answers before JetStream is ready, and two
        # processes may create the stream at once: try a few times before deciding that
        # this server has no JetStream.
        for attempt in range(6):
            try:
                await js.add_stream(name=JETSTREAM_NAME, subjects=subjects)
                return js
            except Exception as exc:
                error = exc
                await asyncio.sleep(0.2 * (attempt + 1))
        log.info("bus: no JetStream on %s (%s); durable events use core NATS", self.url, error)
        return None

    async def _on_message(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
            event = Event(
                msg.subject.removeprefix(SUBJECT_PREFIX),
                dict(body["data"]),
                ts=float(body["ts"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bus: ignoring malformed message on %s: %s", msg.subject, exc)
            return
        self.received += 1
        self.deliver(event)

    async def _disconnected(self) -> None:
        if self._closing:
            return
        log.warning("bus: disconnected from NATS %s; reconnecting", self.url)

    async def _reconnected(self) -> None:
        log.info("bus: reconnected to NATS %s", self.url)

    async def _error(self, exc: Exception) -> None:
        log.debug("bus: NATS client error: %s", exc)

    async def close(self) -> None:
        self._closing = True
        # Let queued events (e.g. "node.left") go out, briefly.
        for _ in range(20):
            if self._outbox.empty() or not self.connected.is_set():
                break
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), 2)


def make_bus(url: str | None, name: str) -> EventBus:
    """In-process bus without a URL, NATS with one (``nats://host:4222``)."""
    return NatsBus(url, name) if url else EventBus()
