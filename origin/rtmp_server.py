"""asyncio RTMP server around the sans-IO core in ``rtmp_protocol``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from meshcast.config import OriginConfig
from meshcast.ingest import AudioConfig, MediaPacket, VideoConfig, deliver
from meshcast.keys import KeyRejected, KeyStore
from meshcast.paths import RTMP_APP
from meshcast.ratelimit import Lockout, credential_id
from meshcast.tokens import token_from_query
from origin import flv
from origin.registry import LiveStream, PublishRefused, StreamAlreadyLive, StreamRegistry
from origin.rtmp_chunk import MessageType
from origin.rtmp_play import RtmpViewer
from origin.rtmp_protocol import (
    ConnectRequest,
    HandshakeComplete,
    MediaMessage,
    PlayRequest,
    PublishRequest,
    RtmpProtocolError,
    RtmpServerConnection,
    SessionLimits,
    StreamMetadata,
    UnpublishRequest,
    UnsupportedCommand,
)

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024


@dataclass
class RtmpMetrics:
    registry: CollectorRegistry
    connections: Counter = field(init=False)
    active: Gauge = field(init=False)
    rejected: Counter = field(init=False)
    bytes_in: Counter = field(init=False)
    packets: Counter = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.connections = Counter(
            "meshcast_rtmp_connections", "RTMP connections accepted", registry=r
        )
        self.active = Gauge("meshcast_rtmp_active_connections", "Open RTMP connections", registry=r)
        self.rejected = Counter(
            "meshcast_rtmp_rejected", "RTMP connections refused or closed", ["reason"], registry=r
        )
        self.bytes_in = Counter("meshcast_rtmp_received_bytes", "Bytes read from RTMP", registry=r)
        self.packets = Counter(
            "meshcast_ingest_packets", "Media packets ingested", ["kind"], registry=r
        )


class _Refused(Exception):
    """Ends a connection after a refusal was queued for the peer."""


def _redact(text: str) -> str:
    """Some encoders put the stream key in the app or tcUrl (``live?key=...``, or
    ``live/KEY`` as the app): keep only what precedes a query or a second path level."""
    head = text.split("?", 1)[0]
    if "://" in head:
        scheme, _, rest = head.partition("://")
        host, _, path = rest.partition("/")
        return f"{scheme}://{host}/{path.split('/', 1)[0]}" + ("/…" if "/" in path else "")
    return head.split("/", 1)[0] + ("/…" if "/" in head.strip("/") else "")


def _unwrap(previous: int | None, ts: int) -> int:
    """RTMP timestamps are 32-bit milliseconds (they wrap after ~49.7 days)."""
    if previous is None:
        return ts
    base = previous & ~0xFFFFFFFF
    candidate = base | ts
    if candidate < previous - 0x80000000:
        candidate += 1 << 32
    return candidate


class _Connection:
    def __init__(
        self,
        server: RtmpServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else "?"
        self.remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.core = RtmpServerConnection(session=server.session_limits)
        self.streams: dict[int, LiveStream] = {}
        self.viewers: dict[int, RtmpViewer] = {}
        self._last_ts: dict[tuple[int, MessageType], int] = {}

    async def run(self) -> None:
        cfg = self.server.config
        timeout = cfg.rtmp_handshake_timeout
        loop = asyncio.get_running_loop()
        # The handshake must *finish* in time, and then the publish be accepted in time: a
        # client dribbling a byte at a time, or pinging, would otherwise reset a per-read
        # timeout forever (slowloris) while holding a connection slot unauthenticated.
        deadline: float | None = loop.time() + cfg.rtmp_handshake_timeout
        waiting_for = f"handshake not done in {cfg.rtmp_handshake_timeout:.0f} s"
        try:
            while not self.core.closed:
                if deadline is not None and self.core.admitted:
                    deadline = None
                # A player sends next to nothing (an acknowledgement per window): while it
                # plays, a dead peer shows as a failed write, not as silence.
                wait: float | None = None if self.viewers else timeout
                if deadline is not None:
                    wait = min(timeout, deadline - loop.time())
                try:
                    if wait is not None and wait <= 0:
                        raise TimeoutError
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), wait)
                except TimeoutError:
                    if deadline is not None:
                        self._close_reason("timeout", waiting_for)
                    else:
                        self._close_reason("timeout", f"no data for {timeout:.0f} s")
                    return
                if not data:
                    self.end_all("publisher disconnected")
                    return
                self.server.metrics.bytes_in.inc(len(data))
                try:
                    events = self.core.receive_data(data)
                    while events:
                        for event in events:
                            if isinstance(event, HandshakeComplete):
                                timeout = cfg.rtmp_idle_timeout
                                deadline = loop.time() + cfg.rtmp_publish_timeout
                                waiting_for = (
                                    f"no publish within {cfg.rtmp_publish_timeout:.0f} s "
                                    "of the handshake"
                                )
                            self._handle(event)
                        # Our decisions (accept/refuse) release what the client pipelined.
                        events = self.core.receive_data(b"") if self.core.has_pending else []
                except RtmpProtocolError as exc:
                    self._close_reason("protocol", f"protocol error: {exc}")
                    return
                except flv.FlvError as exc:
                    self._close_reason("media", f"bad media: {exc}")
                    return
                except _Refused:
                    pass
                for stream_id, stream in list(self.streams.items()):
                    if not stream.live:  # ended by the server (e.g. its transcoder failed)
                        log.warning(
                            "rtmp %s: stream %s ended by the server (%s); closing",
                            self.remote,
                            stream.name,
                            stream.end_reason,
                        )
                        self.core.end_publish(stream_id, f"stream ended: {stream.end_reason}")
                        del self.streams[stream_id]
                await self._flush()
        except (ConnectionError, OSError) as exc:
            self.end_all(f"connection lost: {exc}")
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                await self._flush()
            self.end_all("connection closed")
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(self.writer.wait_closed(), 2)

    async def _flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    def _close_reason(self, reason: str, message: str) -> None:
        log.warning("rtmp %s: closing: %s", self.remote, message)
        self.server.metrics.rejected.labels(reason).inc()
        self.end_all(message)

    def end_all(self, reason: str) -> None:
        for stream in self.streams.values():
            self.server.registry.end(stream, reason)
        self.streams.clear()
        for stream_id in list(self.viewers):
            self._detach(stream_id)

    def shutdown(self) -> None:
        for stream_id in list(self.streams):
            self.core.end_publish(stream_id, "server shutting down")
        self.end_all("server shutdown")
        with contextlib.suppress(Exception):
            self.writer.write(self.core.data_to_send())
        self.writer.close()

    def _handle(self, event: object) -> None:
        if isinstance(event, MediaMessage):
            self._media(event)
        elif isinstance(event, ConnectRequest):
            app = event.app.split("?", 1)[0].strip("/")
            if app != RTMP_APP:
                log.warning(
                    "rtmp %s: connect to app %r refused (publish to /%s)",
                    self.remote,
                    _redact(event.app),
                    RTMP_APP,
                )
                self.server.metrics.rejected.labels("app").inc()
                self.core.reject_connect(
                    event.transaction_id,
                    f"unknown application {_redact(event.app)!r}; use /{RTMP_APP}",
                )
                raise _Refused
            log.debug(
                "rtmp %s: connect app=%s tcUrl=%s", self.remote, app, _redact(event.tc_url or "")
            )
            self.core.accept_connect(event.transaction_id)
        elif isinstance(event, PublishRequest):
            self._publish(event)
        elif isinstance(event, PlayRequest):
            self._play(event)
        elif isinstance(event, StreamMetadata):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.set_metadata(event.metadata)
        elif isinstance(event, UnpublishRequest):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self.server.registry.end(stream, f"publisher sent {event.reason}")
            self._detach(event.stream_id)
        elif isinstance(event, UnsupportedCommand):
            log.info("rtmp %s: unsupported command %r ignored", self.remote, event.name)

    def _publish(self, event: PublishRequest) -> None:
        # Keys may carry a query string (OBS users paste "key?param=..."): it is not part
        # of the secret.
        key = event.stream_key.split("?", 1)[0]
        try:
            name = self.server.keys.verify(key)
        except KeyRejected as exc:
            # The message names the cause, never the presented key (it may be a real
            # key with a typo: a secret).
            log.warning("rtmp %s: publish refused: %s", self.remote, exc)
            if self.server.key_failures.failed(self.ip, credential_id(key)) is not None:
                self.server.metrics.rejected.labels("rate").inc()
                self.core.reject_publish(event.stream_id, "too many failed key attempts")
                raise _Refused from None
            self.server.metrics.rejected.labels("key").inc()
            self.core.reject_publish(event.stream_id, f"publish refused: {exc}")
            raise _Refused from None
        try:
            stream = self.server.registry.publish(name, "rtmp", self.remote)
        except PublishRefused as exc:
            log.warning("rtmp %s: publish refused: %s", self.remote, exc)
            reason = "duplicate" if isinstance(exc, StreamAlreadyLive) else "server"
            self.server.metrics.rejected.labels(reason).inc()
            self.core.reject_publish(event.stream_id, str(exc))
            raise _Refused from None
        self.streams[event.stream_id] = stream
        self.core.accept_publish(event.stream_id)

    def _play(self, event: PlayRequest) -> None:
        """RTMP playback of a live stream's source (see origin/rtmp_play.py)."""
        name, _, query = event.stream_name.partition("?")
        name = name.strip("/").removeprefix(f"{RTMP_APP}/")
        stream = self.server.registry.get(name)
        refusal: tuple[str, str] | None = None
        if stream is None or not stream.live:
            refusal = ("NetStream.Play.StreamNotFound", f"stream {name!r} is not live")
        elif (why := flv.playable_over_rtmp(stream.video_config, stream.audio_config)) is not None:
            refusal = ("NetStream.Play.Failed", f"{name}: {why}; play it over HLS/DASH")
        elif (denied := self.server.play_check(name, token_from_query(query))) is not None:
            refusal = ("NetStream.Play.Failed", f"{name}: {denied}")
        if refusal is not None or stream is None:
            code, description = refusal or ("NetStream.Play.Failed", "")
            log.info("rtmp %s: play refused: %s", self.remote, description)
            self.server.metrics.rejected.labels("play").inc()
            self.core.reject_play(event.stream_id, description, code)
            raise _Refused
        self.core.accept_play(event.stream_id, name)
        viewer = RtmpViewer(
            self.core, event.stream_id, stream, self._write_now, self._close_viewer, self.remote
        )
        self.viewers[event.stream_id] = viewer
        stream.sinks.append(viewer)
        log.info("rtmp %s: playing %s", self.remote, name)
        viewer.start()

    def _write_now(self) -> int:
        """Out of the read loop (media fan-out): queue our output on the socket now.
        Returns the bytes the transport still holds (the viewer's backlog)."""
        out = self.core.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)
        return self.writer.transport.get_write_buffer_size()

    def _close_viewer(self, reason: str) -> None:
        log.info("rtmp %s: playback over: %s", self.remote, reason)
        self._write_now()
        self.writer.close()  # the read loop sees EOF and cleans up

    def _detach(self, stream_id: int) -> None:
        viewer = self.viewers.pop(stream_id, None)
        if viewer is None:
            return
        viewer.closed = True
        # Not during the registry's fan-out loop over the sinks: on the next turn.
        asyncio.get_running_loop().call_soon(_discard, viewer.stream.sinks, viewer)

    def _media(self, event: MediaMessage) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        slot = (event.stream_id, event.kind)
        ts = _unwrap(self._last_ts.get(slot), event.timestamp)
        self._last_ts[slot] = ts
        parsed: VideoConfig | AudioConfig | MediaPacket | None
        if event.kind is MessageType.VIDEO:
            parsed = flv.parse_video_tag(event.payload, ts)
        else:
            parsed = flv.parse_audio_tag(event.payload, ts)
        if parsed is None:
            return
        if isinstance(parsed, MediaPacket):
            self.server.metrics.packets.labels(parsed.kind.value).inc()
        deliver(stream, parsed)


def _discard(sinks: list[Any], viewer: RtmpViewer) -> None:
    if viewer in sinks:
        sinks.remove(viewer)


def _public(name: str, token: str | None) -> str | None:
    return None


class RtmpServer:
    def __init__(
        self,
        config: OriginConfig,
        registry: StreamRegistry,
        keys: KeyStore,
        metrics: RtmpMetrics,
        key_failures: Lockout | None = None,
        play_check: Callable[[str, str | None], str | None] = _public,
    ) -> None:
        self.config = config
        # May a viewer with this token (None: none) play a live stream? None: yes, else
        # why not. The origin passes its access policy check (token-only streams).
        self.play_check = play_check
        self.registry = registry
        self.keys = keys
        self.metrics = metrics
        self.session_limits = SessionLimits()
        self.key_failures = key_failures or Lockout(
            "rtmp key check", config.key_failures_per_minute
        )
        self._per_ip: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.config.host, self.config.rtmp_port, limit=READ_SIZE
        )
        log.info("RTMP listening on rtmp://%s:%d/%s", self.config.host, self.port, RTMP_APP)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.config.max_rtmp_connections:
            log.warning("rtmp: connection limit %d reached", self.config.max_rtmp_connections)
            self.metrics.rejected.labels("limit").inc()
            writer.close()
            return
        conn = _Connection(self, reader, writer)
        if self._per_ip.get(conn.ip, 0) >= self.config.max_rtmp_connections_per_ip:
            log.warning(
                "rtmp: %s has %d connections open (the per-IP limit)",
                conn.ip,
                self.config.max_rtmp_connections_per_ip,
            )
            self.metrics.rejected.labels("ip_limit").inc()
            writer.close()
            return
        self._per_ip[conn.ip] = self._per_ip.get(conn.ip, 0) + 1
        self._connections.add(conn)
        self.metrics.connections.inc()
        self.metrics.active.inc()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        log.debug("rtmp %s: connected", conn.remote)
        try:
            await conn.run()
        except Exception:
            log.exception("rtmp %s: connection handler failed", conn.remote)
            conn.end_all("internal error")
        finally:
            left = self._per_ip.get(conn.ip, 1) - 1
            if left > 0:
                self._per_ip[conn.ip] = left
            else:
                self._per_ip.pop(conn.ip, None)
            self._connections.discard(conn)
            self.metrics.active.dec()
            if task is not None:
                self._tasks.discard(task)
            log.debug("rtmp %s: disconnected", conn.remote)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.shutdown()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=3)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
