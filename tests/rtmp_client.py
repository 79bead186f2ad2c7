"""A scripted RTMP publisher built from our chunk writer, for unit tests and golden
captures. Real-client coverage comes from the ffmpeg CLI and PyAV in tests/e2e."""

from __future__ import annotations

from typing import Any

from origin import amf0
from origin.rtmp_chunk import ChunkWriter, Message, MessageType

C1_TIME = 1234


def handshake_c0c1() -> bytes:
    return b"\x03" + C1_TIME.to_bytes(4, "big") + bytes(4) + (bytes(range(256)) * 6)[:1528]


def handshake_c2(s1: bytes) -> bytes:
    return s1[:4] + (5678).to_bytes(4, "big") + s1[8:]


class ScriptedPublisher:
    """Builds the byte stream an OBS-like encoder sends after the handshake."""

    def __init__(self, chunk_size: int = 128) -> None:
        self.writer = ChunkWriter(128)
        self.out = bytearray()
        if chunk_size != 128:
            self.control(MessageType.SET_CHUNK_SIZE, chunk_size.to_bytes(4, "big"))
            self.writer.chunk_size = chunk_size

    def control(self, type_id: int, payload: bytes) -> ScriptedPublisher:
        self.out += self.writer.write(Message(type_id, 0, 0, payload), 2)
        return self

    def command(self, *values: Any, stream_id: int = 0) -> ScriptedPublisher:
        csid = 4 if stream_id else 3
        body = amf0.encode(*values)
        self.out += self.writer.write(Message(MessageType.COMMAND_AMF0, stream_id, 0, body), csid)
        return self

    def data(self, *values: Any, stream_id: int = 1) -> ScriptedPublisher:
        body = amf0.encode(*values)
        self.out += self.writer.write(Message(MessageType.DATA_AMF0, stream_id, 0, body), 4)
        return self

    def media(self, type_id: int, ts: int, payload: bytes, stream_id: int = 1) -> ScriptedPublisher:
        csid = 6 if type_id == MessageType.VIDEO else 7
        self.out += self.writer.write(Message(type_id, stream_id, ts, payload), csid)
        return self

    def obs_connect_sequence(self, key: str, app: str = "live") -> ScriptedPublisher:
        """The command order OBS (librtmp) uses when it starts streaming."""
        self.command(
            "connect",
            1.0,
            {
                "app": app,
                "type": "nonprivate",
                "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
                "swfUrl": f"rtmp://127.0.0.1/{app}",
                "tcUrl": f"rtmp://127.0.0.1/{app}",
            },
        )
        return self

    def obs_publish_sequence(self, key: str) -> ScriptedPublisher:
        self.command("releaseStream", 2.0, None, key)
        self.command("FCPublish", 3.0, None, key)
        self.command("createStream", 4.0, None)
        self.command("publish", 5.0, None, key, "live", stream_id=1)
        return self

    def take(self) -> bytes:
        out = bytes(self.out)
        self.out.clear()
        return out
