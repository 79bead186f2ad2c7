"""Handing live streams to transcoder nodes on other hosts (``meshcast transcoder``).

Transcoder nodes announce themselves on the event bus (``transcoder.heartbeat`` with their
``tcp://`` URL, stream count and capacity); the origin assigns each new stream to the least
loaded live node and streams its ingest items over one TCP connection
(``meshcast/ingest_wire.py`` explains why TCP and not NATS for media). The node writes the
segments into the segment store the origin serves from (a shared volume on one host, S3
across hosts).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from meshcast import events
from meshcast.ingest import AudioConfig, KeyframeGate, MediaPacket, VideoConfig
from meshcast.ingest_wire import End, Hello, WireItem, encode

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Node:
    url: str
    streams: int
    capacity: int
    seen: float


class TranscoderDirectory:
    """Which transcoder nodes are alive, from their heartbeats on the bus."""

    def __init__(self, bus: events.EventBus, silent_after: float = 6.0) -> None:
        self.bus = bus
        self.silent_after = silent_after
        self._nodes: dict[str, _Node] = {}
        self._assigned: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="transcoder directory")

    async def _listen(self) -> None:
        with self.bus.subscribe([events.TRANSCODER_HEARTBEAT]) as sub:
            async for event in sub:
                url = event.data.get("url")
                if not isinstance(url, str) or not url.startswith("tcp://"):
                    continue
                if url not in self._nodes:
                    log.info("transcoder node %s available", url)
                streams, capacity = event.data.get("streams", 0), event.data.get("capacity", 1)
                self._nodes[url] = _Node(
                    url,
                    streams if isinstance(streams, int) else 0,
                    capacity if isinstance(capacity, int) and capacity > 0 else 1,
                    time.monotonic(),
                )
                self._assigned[url] = 0  # the node's own count is fresher than ours

    def alive(self) -> list[str]:
        cutoff = time.monotonic() - self.silent_after
        return sorted(url for url, node in self._nodes.items() if node.seen >= cutoff)

    def pick(self) -> str | None:
        """The live node with the lowest load (streams per capacity), or None."""
        alive = [self._nodes[url] for url in self.alive()]
        if not alive:
            return None
        best = min(alive, key=lambda n: (n.streams + self._assigned[n.url]) / n.capacity)
        self._assigned[best.url] += 1  # until its next heartbeat counts the stream
        return best.url

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RemoteSink:
    """PacketSink that sends one live stream to a transcoder node over TCP.

    Ingest calls are synchronous on the event loop; a writer task drains a byte-bounded
    buffer into the socket, so TCP backpressure from a slow node fills the buffer and the
    keyframe gate drops video as for a local worker, never blocking ingest."""

    def __init__(
        self,
        name: str,
        url: str,
        secret: str,
        on_failure: Callable[[str], None],
        max_buffer: int = 32 * 1024 * 1024,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "tcp" or not parts.hostname or not parts.port:
            raise ValueError(f"transcoder URL must be tcp://HOST:PORT, got {url!r}")
        self.name, self.url = name, url
        self._on_failure = on_failure
        self._max_buffer = max_buffer
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._gate = KeyframeGate()
        self._ending = self._failed = False
        self._send(Hello(name, secret=secret), force=True)
        self._task = asyncio.get_running_loop().create_task(
            self._run(parts.hostname, parts.port), name=f"remote transcode {name}"
        )

    @property
    def dropped(self) -> int:
        return self._gate.dropped

    @property
    def done(self) -> bool:
        return self._task.done()

    def _send(self, item: WireItem, force: bool = False) -> bool:
        if self._failed or (self._ending and not force):
            return False
        data = encode(item)
        if not force and self._queued + len(data) > self._max_buffer:
            return False
        self._queue.append(data)
        self._queued += len(data)
        self._wake.set()
        return True

    def on_video_config(self, config: VideoConfig) -> None:
        self._send(config, force=True)  # small, and the decoder cannot do without it

    def on_audio_config(self, config: AudioConfig) -> None:
        self._send(config, force=True)

    def on_packet(self, packet: MediaPacket) -> None:
        if not self._gate.admit(packet):
            return
        if not self._send(packet) and self._gate.lost(packet) and not self._failed:
            log.warning(
                "stream %s: transcoder %s behind; dropping video to the next keyframe",
                self.name,
                self.url,
            )

    def on_end(self) -> None:
        if not self._ending:
            self._send(End(), force=True)
            self._ending = True

    async def _run(self, host: str, port: int) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            _, out = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            writer = out
            log.info("stream %s: transcoding on %s", self.name, self.url)
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    data = self._queue.popleft()
                    self._queued -= len(data)
                    out.write(data)
                    await out.drain()
                if self._ending:
                    break
        except (OSError, TimeoutError) as exc:
            self._failed = True
            log.error("stream %s: transcoder %s failed: %s", self.name, self.url, exc)
            self._on_failure(f"transcoder {self.url} unreachable ({exc})")
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def flushed(self) -> None:
        """Until everything queued (the End included) was written, or the link failed."""
        await asyncio.shield(self._task)
