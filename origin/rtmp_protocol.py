"""Sans-IO RTMP server connection: ``receive_data(bytes) -> events``, ``data_to_send()``.

Covers what publishers (OBS, FFmpeg, hardware encoders) use: the plain handshake with
its timing fields, the chunk stream, protocol control messages (Set Chunk Size, Abort,
Acknowledgement and Window Acknowledgement Size, Set Peer Bandwidth, User Control ping),
the publish command sequence (connect, releaseStream, FCPublish, createStream, publish,
FCUnpublish, deleteStream) and ``@setDataFrame onMetaData``; and the play sequence
players use (createStream, play, then the server's StreamBegin, NetStream.Play.Reset/Start,
``|RtmpSampleAccess`` and the media): the application decides and feeds the media.
"""

from __future__ import annotations

import collections
import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from origin import amf0
from origin.rtmp_chunk import (
    ChunkError,
    ChunkLimits,
    ChunkReader,
    ChunkWriter,
    Message,
    MessageType,
)

HANDSHAKE_SIZE: Final = 1536
RTMP_VERSION: Final = 3
SERVER_CHUNK_SIZE: Final = 4096
WINDOW_ACK_SIZE: Final = 2_500_000
MAX_STREAMS_PER_CONNECTION: Final = 8

# Chunk stream ids for what we send, as Flash Media Server does.
CSID_CONTROL: Final = 2
CSID_COMMAND: Final = 3
CSID_STATUS: Final = 5
CSID_AUDIO: Final = 6
CSID_VIDEO: Final = 7

USER_CONTROL_STREAM_BEGIN: Final = 0
USER_CONTROL_STREAM_EOF: Final = 1
USER_CONTROL_SET_BUFFER_LENGTH: Final = 3
USER_CONTROL_PING_REQUEST: Final = 6
USER_CONTROL_PING_RESPONSE: Final = 7


# Commands a client may send before it is admitted (a publish or a play accepted): the
# publish handshake of OBS, FFmpeg and librtmp, the play sequence of players (librtmp,
# FFmpeg, GStreamer), and the cleanup ones they send when they give up. Any other command
# before admission is answered ``_error`` after decoding only its name and transaction id.
PRE_PUBLISH_COMMANDS: Final = frozenset(
    {
        "connect",
        "releaseStream",
        "FCPublish",
        "createStream",
        "publish",
        "getStreamLength",
        "FCSubscribe",
        "play",
        "receiveAudio",
        "receiveVideo",
        "FCUnpublish",
        "deleteStream",
        "closeStream",
    }
)


COMMAND_LIMITS: Final = amf0.AmfLimits(
    max_bytes=64 * 1024, max_values=1024, max_depth=8, max_string=16 * 1024
)
# onMetaData and the other data messages of an admitted publisher.
DATA_LIMITS: Final = amf0.AmfLimits(
    max_bytes=256 * 1024, max_values=8192, max_depth=8, max_string=64 * 1024
)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What a connection may cost before it is admitted (a publish or play accepted), and the
    bounds on AMF0 messages at any time. Before admission nobody knows who the peer is,
    so the budget is small: the whole OBS/FFmpeg handshake is ~2 kB in ~10 messages."""

    pre_publish_bytes: int = 64 * 1024
    pre_publish_messages: int = 64
    # Chunk-stream reassembly before admission: no message (or sum of partial ones) above.
    pre_publish_message_size: int = 16 * 1024
    allowed_before_publish: frozenset[str] = PRE_PUBLISH_COMMANDS
    commands: amf0.AmfLimits = COMMAND_LIMITS
    data: amf0.AmfLimits = DATA_LIMITS


class RtmpProtocolError(ValueError):
    """The peer violated the protocol; the connection must be closed."""


class _State(enum.Enum):
    HANDSHAKE_C0C1 = "c0c1"
    HANDSHAKE_C2 = "c2"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


# ---- events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    client_time: int
    client_version: bytes  # 4 bytes; zero for the plain handshake


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    transaction_id: float
    app: str
    tc_url: str | None
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishRequest:
    stream_id: int
    stream_key: str
    publish_type: str
    transaction_id: float


@dataclass(frozen=True, slots=True)
class PlayRequest:
    stream_id: int
    stream_name: str  # as the player sent it: NAME, maybe with a ?query
    transaction_id: float


@dataclass(frozen=True, slots=True)
class StreamMetadata:
    stream_id: int
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MediaMessage:
    stream_id: int
    kind: MessageType  # AUDIO or VIDEO
    timestamp: int  # milliseconds, 32-bit as on the wire
    payload: bytes


@dataclass(frozen=True, slots=True)
class UnpublishRequest:
    stream_id: int
    reason: str  # the command that ended it


@dataclass(frozen=True, slots=True)
class UnsupportedCommand:
    name: str
    transaction_id: float


Event = (
    HandshakeComplete
    | ConnectRequest
    | PublishRequest
    | PlayRequest
    | StreamMetadata
    | MediaMessage
    | UnpublishRequest
    | UnsupportedCommand
)


@dataclass(slots=True)
class _MessageStream:
    stream_id: int
    publishing: bool = False
    pending_publish: bool = False
    key: str | None = None
    playing: bool = False


def _uptime_ms_factory() -> Callable[[], int]:
    start = time.monotonic()
    return lambda: int((time.monotonic() - start) * 1000) & 0xFFFFFFFF


@dataclass
class RtmpServerConnection:
    """One RTMP connection, server side. Not thread-safe; owned by one task."""

    limits: ChunkLimits = field(default_factory=ChunkLimits)
    clock: Callable[[], int] = field(default_factory=_uptime_ms_factory)
    random_bytes: Callable[[int], bytes] = os.urandom
    session: SessionLimits = field(default_factory=SessionLimits)

    def __post_init__(self) -> None:
        self._state = _State.HANDSHAKE_C0C1
        self._in = bytearray()
        self._out = bytearray()
        # Until admission, reassembly is held to small messages (see SessionLimits).
        size = self.session.pre_publish_message_size
        self._reader = ChunkReader(
            replace(self.limits, max_message_size=size, max_partial_bytes=size)
        )
        self._admitted = False
        self._pre_bytes = 0
        self._pre_messages = 0
        self._writer = ChunkWriter()
        self._s1 = b""
        self._bytes_received = 0
        self._last_ack_sent = 0
        self._peer_window: int | None = None
        self.peer_bytes_acknowledged = 0
        self._streams: dict[int, _MessageStream] = {}
        self._next_stream_id = 1
        self.app: str | None = None
        # After a ConnectRequest or PublishRequest the core waits for the application's
        # decision before it interprets anything the client pipelined behind it.
        self._awaiting_decision = False
        self._pending: collections.deque[Message] = collections.deque()

    # ---- public API -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def admitted(self) -> bool:
        """A publish (the peer proved a key) or a play (the access check passed) was
        accepted: the pre-publish budget is over."""
        return self._admitted

    def _admit(self) -> None:
        self._admitted = True
        self._reader.limits = self.limits

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def has_pending(self) -> bool:
        """Messages wait behind a decision; call ``receive_data(b"")`` after deciding."""
        return bool(self._pending) and not self._awaiting_decision

    def receive_data(self, data: bytes) -> list[Event]:
        if self._state is _State.CLOSED:
            raise RtmpProtocolError("connection already closed")
        self._bytes_received += len(data)
        events: list[Event] = []
        try:
            if self._state in (_State.HANDSHAKE_C0C1, _State.HANDSHAKE_C2):
                self._in += data
                data = self._handshake(events)
                if self._state in (_State.HANDSHAKE_C0C1, _State.HANDSHAKE_C2):
                    return events
            self._pending.extend(self._reader.feed(data))
            while self._pending and not self._awaiting_decision and not self.closed:
                self._handle_message(self._pending.popleft(), events)
        except (ChunkError, amf0.AmfError) as exc:
            self._state = _State.CLOSED
            raise RtmpProtocolError(str(exc)) from exc
        except RtmpProtocolError:
            self._state = _State.CLOSED
            raise
        self._maybe_acknowledge()
        return events

    def accept_connect(self, transaction_id: float) -> None:
        self._awaiting_decision = False
        self._send_control(MessageType.WINDOW_ACK_SIZE, WINDOW_ACK_SIZE.to_bytes(4, "big"))
        # Limit type 2 (dynamic), as FMS and nginx-rtmp send it.
        self._send_control(
            MessageType.SET_PEER_BANDWIDTH, WINDOW_ACK_SIZE.to_bytes(4, "big") + b"\x02"
        )
        self._send_control(MessageType.SET_CHUNK_SIZE, SERVER_CHUNK_SIZE.to_bytes(4, "big"))
        self._writer.chunk_size = SERVER_CHUNK_SIZE
        self._send_command(
            0,
            "_result",
            transaction_id,
            {"fmsVer": "FMS/3,5,7,7009", "capabilities": 31.0, "mode": 1.0},
            {
                "level": "status",
                "code": "NetConnection.Connect.Success",
                "description": "Connection succeeded.",
                "objectEncoding": 0.0,
            },
        )
        self._state = _State.CONNECTED

    def reject_connect(self, transaction_id: float, description: str) -> None:
        self._awaiting_decision = False
        self._send_command(
            0,
            "_error",
            transaction_id,
            None,
            {
                "level": "error",
                "code": "NetConnection.Connect.Rejected",
                "description": description,
            },
        )
        self._state = _State.CLOSED

    def accept_publish(self, stream_id: int) -> None:
        stream = self._stream(stream_id)
        self._awaiting_decision = False
        stream.pending_publish = False
        stream.publishing = True
        self._admit()
        self._send_user_control(USER_CONTROL_STREAM_BEGIN, stream_id)
        self._send_status(
            stream_id, "status", "NetStream.Publish.Start", f"{stream.key} is now published."
        )

    def reject_publish(
        self, stream_id: int, description: str, code: str = "NetStream.Publish.BadName"
    ) -> None:
        stream = self._stream(stream_id)
        self._awaiting_decision = False
        stream.pending_publish = False
        self._send_status(stream_id, "error", code, description)
        # A refused publisher gets no second try on this connection: the key was wrong.
        self._state = _State.CLOSED

    def end_publish(self, stream_id: int, description: str) -> None:
        """Server-side end of a publication (e.g. shutdown): tell the encoder, then close."""
        if stream_id in self._streams:
            self._send_status(stream_id, "status", "NetStream.Unpublish.Success", description)
            self._send_user_control(USER_CONTROL_STREAM_EOF, stream_id)
        self._state = _State.CLOSED

    def accept_play(self, stream_id: int, name: str) -> None:
        """Start playback on ``stream_id``; the application then sends the media."""
        stream = self._stream(stream_id)
        self._awaiting_decision = False
        stream.playing = True
        self._admit()
        self._send_user_control(USER_CONTROL_STREAM_BEGIN, stream_id)
        self._send_status(
            stream_id, "status", "NetStream.Play.Reset", f"Playing and resetting {name}."
        )
        self._send_status(stream_id, "status", "NetStream.Play.Start", f"Started playing {name}.")
        self.send_data(stream_id, "|RtmpSampleAccess", True, True)

    def reject_play(
        self, stream_id: int, description: str, code: str = "NetStream.Play.StreamNotFound"
    ) -> None:
        """Refuse a play request; the connection closes after the status is sent."""
        self._stream(stream_id)
        self._awaiting_decision = False
        self._send_status(stream_id, "error", code, description)
        self._state = _State.CLOSED

    def end_play(self, stream_id: int, description: str) -> None:
        """The played stream ended: tell the player, then close (it cannot resume)."""
        if stream_id in self._streams:
            self._send_status(stream_id, "status", "NetStream.Play.UnpublishNotify", description)
            self._send_status(stream_id, "status", "NetStream.Play.Stop", description)
            self._send_user_control(USER_CONTROL_STREAM_EOF, stream_id)
        self._state = _State.CLOSED

    def send_media(self, stream_id: int, type_id: MessageType, timestamp: int, body: bytes) -> None:
        """One FLV audio/video tag body to a playing stream (timestamp in milliseconds)."""
        csid = CSID_VIDEO if type_id == MessageType.VIDEO else CSID_AUDIO
        self._out += self._writer.write(Message(type_id, stream_id, timestamp, body), csid)

    def send_data(self, stream_id: int, *values: Any) -> None:
        """An AMF0 data message (onMetaData, |RtmpSampleAccess) to a playing stream."""
        message = Message(MessageType.DATA_AMF0, stream_id, 0, amf0.encode(*values))
        self._out += self._writer.write(message, CSID_STATUS)

    # ---- handshake ------------------------------------------------------------------

    def _handshake(self, events: list[Event]) -> bytes:
        if self._state is _State.HANDSHAKE_C0C1:
            if not self._in:
                return b""
            if self._in[0] != RTMP_VERSION:
                raise RtmpProtocolError(
                    f"unsupported RTMP version {self._in[0]} in C0 (only plain RTMP 3; "
                    "RTMPE/RTMPT are not offered)"
                )
            if len(self._in) < 1 + HANDSHAKE_SIZE:
                return b""
            c1 = bytes(self._in[1 : 1 + HANDSHAKE_SIZE])
            del self._in[: 1 + HANDSHAKE_SIZE]
            now = self.clock()
            # S1: our time, zero version field (plain handshake: clients then skip the
            # digest check), random filler.
            self._s1 = now.to_bytes(4, "big") + bytes(4) + self.random_bytes(HANDSHAKE_SIZE - 8)
            # S2 echoes C1: its time, the time we read C1, and its random bytes.
            s2 = c1[:4] + now.to_bytes(4, "big") + c1[8:]
            self._out += bytes([RTMP_VERSION]) + self._s1 + s2
            events.append(HandshakeComplete(int.from_bytes(c1[:4], "big"), c1[4:8]))
            self._state = _State.HANDSHAKE_C2
        if len(self._in) < HANDSHAKE_SIZE:
            return b""
        # C2 should echo S1; we do not insist (encoders differ), we only consume it.
        rest = bytes(self._in[HANDSHAKE_SIZE:])
        self._in.clear()
        self._state = _State.CONNECTING
        return rest

    # ---- messages -------------------------------------------------------------------

    def _handle_message(self, message: Message, events: list[Event]) -> None:
        if self._state is _State.CLOSED:
            return  # ignore what follows a refusal we already queued
        t = message.type_id
        p = message.payload
        if not self._admitted:
            self._charge(len(p))
        if t == MessageType.SET_CHUNK_SIZE:
            return  # applied by the reader
        if t == MessageType.ABORT:
            if len(p) < 4:
                raise RtmpProtocolError("Abort message shorter than 4 bytes")
            self._reader.abort(int.from_bytes(p[:4], "big"))
        elif t == MessageType.ACKNOWLEDGEMENT:
            if len(p) < 4:
                raise RtmpProtocolError("Acknowledgement shorter than 4 bytes")
            self.peer_bytes_acknowledged = int.from_bytes(p[:4], "big")
        elif t == MessageType.WINDOW_ACK_SIZE:
            if len(p) < 4:
                raise RtmpProtocolError("Window Acknowledgement Size shorter than 4 bytes")
            window = int.from_bytes(p[:4], "big")
            if window == 0:
                raise RtmpProtocolError("Window Acknowledgement Size of 0")
            self._peer_window = window
        elif t == MessageType.SET_PEER_BANDWIDTH:
            if len(p) < 5:
                raise RtmpProtocolError("Set Peer Bandwidth shorter than 5 bytes")
        elif t == MessageType.USER_CONTROL:
            self._handle_user_control(p)
        elif t in (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3):
            # An AMF3 command is AMF0 after a one-byte format selector.
            body = p[1:] if t == MessageType.COMMAND_AMF3 else p
            self._handle_command(message.stream_id, self._decode_command(body), events)
        elif t in (MessageType.DATA_AMF0, MessageType.DATA_AMF3):
            stream = self._streams.get(message.stream_id)
            if stream is None or not stream.publishing:
                return  # metadata of nothing being published: not even decoded
            body = p[1:] if t == MessageType.DATA_AMF3 else p
            self._handle_data(message.stream_id, amf0.decode(body, self.session.data), events)
        elif t in (MessageType.AUDIO, MessageType.VIDEO):
            self._handle_media(message, events)
        elif t == MessageType.AGGREGATE:
            for sub in _split_aggregate(message):
                self._handle_message(sub, events)
        # Shared objects and unknown types carry nothing a publisher needs: ignore them.

    def _charge(self, size: int) -> None:
        """Count a message against the pre-publish budget (bytes and messages)."""
        self._pre_bytes += size
        self._pre_messages += 1
        limits = self.session
        if self._pre_bytes > limits.pre_publish_bytes:
            raise RtmpProtocolError(
                f"more than {limits.pre_publish_bytes} bytes of messages before publishing"
            )
        if self._pre_messages > limits.pre_publish_messages:
            raise RtmpProtocolError(
                f"more than {limits.pre_publish_messages} messages before publishing"
            )

    def _decode_command(self, body: bytes) -> list[Any]:
        """A command's values; before admission only commands of the publish handshake
        are decoded beyond their name and transaction id."""
        limits = self.session.commands
        if self._admitted:
            return amf0.decode(body, limits)
        head = amf0.decode_head(body, 2, limits)
        if head and head[0] in self.session.allowed_before_publish:
            return amf0.decode(body, limits)
        return head

    def _handle_user_control(self, p: bytes) -> None:
        if len(p) < 2:
            raise RtmpProtocolError("User Control message shorter than 2 bytes")
        event_type = int.from_bytes(p[:2], "big")
        if event_type == USER_CONTROL_PING_REQUEST:
            if len(p) < 6:
                raise RtmpProtocolError("PingRequest shorter than 6 bytes")
            self._send_control(
                MessageType.USER_CONTROL,
                USER_CONTROL_PING_RESPONSE.to_bytes(2, "big") + p[2:6],
            )

    def _handle_media(self, message: Message, events: list[Event]) -> None:
        stream = self._streams.get(message.stream_id)
        if stream is None or not stream.publishing:
            if stream is not None and stream.pending_publish:
                raise RtmpProtocolError(
                    "media sent before the publish was accepted (wait for onStatus)"
                )
            raise RtmpProtocolError(f"media on stream {message.stream_id} that is not publishing")
        if not message.payload:
            return  # FFmpeg sends empty tags as keep-alives on some paths
        events.append(
            MediaMessage(
                message.stream_id,
                MessageType(message.type_id),
                message.timestamp,
                message.payload,
            )
        )

    def _handle_data(self, stream_id: int, values: list[Any], events: list[Event]) -> None:
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            events.append(StreamMetadata(stream_id, dict(values[1])))

    def _handle_command(self, stream_id: int, values: list[Any], events: list[Event]) -> None:
        if len(values) < 2 or not isinstance(values[0], str):
            raise RtmpProtocolError("command message without a name and transaction id")
        name, txn = values[0], values[1]
        if not isinstance(txn, float):
            raise RtmpProtocolError(f"command {name!r} has a non-numeric transaction id")
        args = values[3:]
        if name == "connect":
            if self._state is not _State.CONNECTING:
                raise RtmpProtocolError("connect sent twice")
            props = values[2] if len(values) > 2 and isinstance(values[2], dict) else None
            if props is None:
                raise RtmpProtocolError("connect without a command object")
            app = props.get("app")
            if not isinstance(app, str):
                raise RtmpProtocolError("connect command object has no 'app' string")
            tc_url = props.get("tcUrl")
            self.app = app
            events.append(
                ConnectRequest(txn, app, tc_url if isinstance(tc_url, str) else None, props)
            )
            self._awaiting_decision = True
            return
        if self._state is not _State.CONNECTED:
            raise RtmpProtocolError(f"command {name!r} before a successful connect")
        if name in ("releaseStream", "FCPublish"):
            self._send_command(0, "_result", txn, None, amf0.UNDEFINED)
        elif name == "createStream":
            if len(self._streams) >= MAX_STREAMS_PER_CONNECTION:
                raise RtmpProtocolError(
                    f"more than {MAX_STREAMS_PER_CONNECTION} streams on one connection"
                )
            sid = self._next_stream_id
            self._next_stream_id += 1
            self._streams[sid] = _MessageStream(sid)
            self._send_command(0, "_result", txn, None, float(sid))
        elif name == "publish":
            stream = self._streams.get(stream_id)
            if stream is None:
                raise RtmpProtocolError(f"publish on stream {stream_id} that was never created")
            if stream.publishing or stream.pending_publish:
                raise RtmpProtocolError(f"publish twice on stream {stream_id}")
            if not args or not isinstance(args[0], str):
                raise RtmpProtocolError("publish without a stream name")
            publish_type = args[1] if len(args) > 1 and isinstance(args[1], str) else "live"
            stream.pending_publish = True
            stream.key = args[0]
            events.append(PublishRequest(stream_id, args[0], publish_type, txn))
            self._awaiting_decision = True
        elif name == "play":
            stream = self._streams.get(stream_id)
            if stream is None:
                raise RtmpProtocolError(f"play on stream {stream_id} that was never created")
            if stream.playing or stream.publishing or stream.pending_publish:
                raise RtmpProtocolError(f"play on stream {stream_id} that is already in use")
            if not args or not isinstance(args[0], str) or not args[0]:
                raise RtmpProtocolError("play without a stream name")
            events.append(PlayRequest(stream_id, args[0], txn))
            self._awaiting_decision = True
        elif name in ("getStreamLength", "FCSubscribe"):
            # Players ask before playing; a live stream has no length (0, as FMS says).
            self._send_command(0, "_result", txn, None, 0.0)
        elif name in ("receiveAudio", "receiveVideo"):
            pass  # a playing client's preferences; everything is sent
        elif name == "FCUnpublish":
            self._send_command(0, "_result", txn, None, amf0.UNDEFINED)
            for stream in self._streams.values():
                if stream.publishing:
                    stream.publishing = False
                    events.append(UnpublishRequest(stream.stream_id, name))
        elif name in ("deleteStream", "closeStream"):
            target = stream_id
            if name == "deleteStream" and args and isinstance(args[0], float):
                target = int(args[0])
            stream = self._streams.pop(target, None)
            if stream is not None and (stream.publishing or stream.playing):
                events.append(UnpublishRequest(target, name))
        else:
            if txn:
                self._send_command(
                    0,
                    "_error",
                    txn,
                    None,
                    {
                        "level": "error",
                        "code": "NetConnection.Call.Failed",
                        "description": f"{name} is not supported",
                    },
                )
            events.append(UnsupportedCommand(name, txn))

    def _stream(self, stream_id: int) -> _MessageStream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise ValueError(f"no message stream {stream_id}") from None

    # ---- output ---------------------------------------------------------------------

    def _maybe_acknowledge(self) -> None:
        if self._peer_window and self._bytes_received - self._last_ack_sent >= self._peer_window:
            self._last_ack_sent = self._bytes_received
            self._send_control(
                MessageType.ACKNOWLEDGEMENT, (self._bytes_received & 0xFFFFFFFF).to_bytes(4, "big")
            )

    def _send_control(self, type_id: MessageType, payload: bytes) -> None:
        self._out += self._writer.write(Message(type_id, 0, 0, payload), CSID_CONTROL)

    def _send_user_control(self, event_type: int, stream_id: int) -> None:
        self._send_control(
            MessageType.USER_CONTROL, event_type.to_bytes(2, "big") + stream_id.to_bytes(4, "big")
        )

    def _send_command(self, stream_id: int, *values: Any) -> None:
        payload = amf0.encode(*values)
        csid = CSID_STATUS if stream_id else CSID_COMMAND
        self._out += self._writer.write(
            Message(MessageType.COMMAND_AMF0, stream_id, 0, payload), csid
        )

    def _send_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self._send_command(
            stream_id,
            "onStatus",
            0.0,
            None,
            {"level": level, "code": code, "description": description},
        )


def _split_aggregate(message: Message) -> list[Message]:
    """An aggregate message holds FLV tags (11-byte header, body, 4-byte back pointer)."""
    out: list[Message] = []
    p = message.payload
    pos = 0
    base: int | None = None
    while pos < len(p):
        if pos + 11 > len(p):
            raise RtmpProtocolError("truncated aggregate sub-message header")
        type_id = p[pos]
        size = int.from_bytes(p[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(p[pos + 4 : pos + 7], "big") | (p[pos + 7] << 24)
        body_start = pos + 11
        body_end = body_start + size
        if body_end + 4 > len(p):
            raise RtmpProtocolError("truncated aggregate sub-message body")
        if type_id not in (MessageType.AUDIO, MessageType.VIDEO, MessageType.DATA_AMF0):
            raise RtmpProtocolError(f"aggregate sub-message of type {type_id}")
        if base is None:
            base = ts
        out.append(
            Message(
                type_id,
                message.stream_id,
                (message.timestamp + ts - base) & 0xFFFFFFFF,
                bytes(p[body_start:body_end]),
            )
        )
        pos = body_end + 4
    return out
