"""RTMP chunk stream: sans-IO reader (bytes -> messages) and writer (messages -> bytes).

Follows the Adobe RTMP 1.0 specification (section 5.3) with the de-facto rules that
FFmpeg, librtmp (OBS) and Flash agree on:
- a type-3 chunk that starts a new message reuses the timestamp field of the previous
  header on that chunk stream as its delta;
- type-3 chunks repeat the 4-byte extended timestamp when the previous header carried one
  (some old encoders omit it on continuation chunks; we detect that, like SRS does).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

EXTENDED_TIMESTAMP: Final = 0xFFFFFF
DEFAULT_CHUNK_SIZE: Final = 128
# The message length field is 24 bits, so a larger chunk size can never help a sender.
MAX_CHUNK_SIZE: Final = 0xFFFFFF


class MessageType(enum.IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class ChunkError(ValueError):
    """The peer broke the chunk stream framing; the connection cannot continue."""


@dataclass(slots=True)
class Message:
    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes


@dataclass(slots=True)
class _ChunkStreamState:
    timestamp: int = 0
    ts_field: int = 0  # last timestamp/delta field as sent (the extended value if any)
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    partial: bytearray = field(default_factory=bytearray)

    @property
    def in_message(self) -> bool:
        return len(self.partial) > 0


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    max_message_size: int = 8 * 1024 * 1024
    # Sum of all half-assembled messages; bounds memory per connection.
    max_partial_bytes: int = 16 * 1024 * 1024
    max_chunk_streams: int = 64


class ChunkReader:
    """Reassembles messages from chunks. ``feed`` returns complete messages in order."""

    def __init__(self, limits: ChunkLimits | None = None) -> None:
        self.limits = limits or ChunkLimits()
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._buf = bytearray()
        self._streams: dict[int, _ChunkStreamState] = {}
        self._partial_total = 0

    def set_chunk_size(self, size: int) -> None:
        if size & 0x80000000 or not 1 <= size <= MAX_CHUNK_SIZE:
            raise ChunkError(f"absurd chunk size {size} (allowed 1..{MAX_CHUNK_SIZE})")
        self.chunk_size = size

    def abort(self, csid: int) -> None:
        state = self._streams.get(csid)
        if state is not None and state.partial:
            self._partial_total -= len(state.partial)
            state.partial = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        messages: list[Message] = []
        pos = 0
        while True:
            result = self._parse_chunk(pos)
            if result is None:
                break
            pos, message = result
            if message is not None:
                messages.append(message)
                # SetChunkSize changes how the very next chunk is framed, so apply it here,
                # not after the whole read buffer has been parsed.
                if message.type_id == MessageType.SET_CHUNK_SIZE:
                    if len(message.payload) < 4:
                        raise ChunkError("SetChunkSize message shorter than 4 bytes")
                    self.set_chunk_size(int.from_bytes(message.payload[:4], "big"))
        del self._buf[:pos]
        return messages

    def _parse_chunk(self, pos: int) -> tuple[int, Message | None] | None:
        buf = self._buf
        end = len(buf)
        if pos >= end:
            return None
        first = buf[pos]
        fmt = first >> 6
        csid = first & 0x3F
        p = pos + 1
        if csid == 0:
            if p + 1 > end:
                return None
            csid = 64 + buf[p]
            p += 1
        elif csid == 1:
            if p + 2 > end:
                return None
            csid = 64 + buf[p] + (buf[p + 1] << 8)
            p += 2

        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise ChunkError(f"chunk type {fmt} on chunk stream {csid} without a type-0 header")
            if len(self._streams) >= self.limits.max_chunk_streams:
                raise ChunkError(f"more than {self.limits.max_chunk_streams} chunk streams")
            state = _ChunkStreamState()
        header_len = (11, 7, 3, 0)[fmt]
        if p + header_len > end:
            return None
        new_message = not state.in_message
        if fmt == 3:
            ts_field = state.ts_field
            length, type_id, stream_id = state.length, state.type_id, state.stream_id
            extended = state.extended
        else:
            if not new_message:
                raise ChunkError(
                    f"type-{fmt} chunk on chunk stream {csid} interrupts an unfinished message"
                )
            ts_field = int.from_bytes(buf[p : p + 3], "big")
            if fmt <= 1:
                length = int.from_bytes(buf[p + 3 : p + 6], "big")
                type_id = buf[p + 6]
            else:
                length, type_id = state.length, state.type_id
            stream_id = state.stream_id
            if fmt == 0:
                stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
            extended = ts_field == EXTENDED_TIMESTAMP
        p += header_len
        if extended:
            if p + 4 > end:
                return None
            ext = int.from_bytes(buf[p : p + 4], "big")
            if fmt == 3 and not new_message and ext != state.ts_field:
                pass  # encoder omitted the repeated extended timestamp; those 4 bytes are payload
            else:
                ts_field = ext
                p += 4

        if new_message and length > self.limits.max_message_size:
            raise ChunkError(
                f"message of {length} bytes exceeds the {self.limits.max_message_size} limit"
            )
        want = min(self.chunk_size, length - len(state.partial))
        if p + want > end:
            return None

        # The whole chunk is here: commit header state.
        if csid not in self._streams:
            self._streams[csid] = state
        if new_message:
            if fmt == 0:
                state.timestamp = ts_field
            else:
                state.timestamp = (state.timestamp + ts_field) & 0xFFFFFFFF
            state.ts_field = ts_field
            state.length, state.type_id, state.stream_id = length, type_id, stream_id
            state.extended = extended
        if self._partial_total + want > self.limits.max_partial_bytes:
            raise ChunkError("too many bytes buffered in unfinished messages")
        state.partial += buf[p : p + want]
        self._partial_total += want
        p += want
        if len(state.partial) < state.length:
            return p, None
        payload = bytes(state.partial)
        self._partial_total -= len(state.partial)
        state.partial = bytearray()
        return p, Message(state.type_id, state.stream_id, state.timestamp, payload)


def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 2 or csid > 65599:
        raise ValueError(f"chunk stream id {csid} out of range")
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    rest = csid - 64
    return bytes([(fmt << 6) | 1, rest & 0xFF, rest >> 8])


class ChunkWriter:
    """Serializes messages: a type-0 chunk, then type-3 continuations."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size

    def write(self, message: Message, csid: int) -> bytes:
        payload = message.payload
        if len(payload) > 0xFFFFFF:
            raise ValueError("RTMP message payload larger than 16 MiB")
        ts = message.timestamp & 0xFFFFFFFF
        extended = ts >= EXTENDED_TIMESTAMP
        ext = ts.to_bytes(4, "big") if extended else b""
        out = bytearray(_basic_header(0, csid))
        out += (EXTENDED_TIMESTAMP if extended else ts).to_bytes(3, "big")
        out += len(payload).to_bytes(3, "big")
        out.append(message.type_id)
        out += message.stream_id.to_bytes(4, "little")
        out += ext
        out += payload[: self.chunk_size]
        continuation = _basic_header(3, csid) + ext
        for start in range(self.chunk_size, len(payload), self.chunk_size):
            out += continuation
            out += payload[start : start + self.chunk_size]
        return bytes(out)
