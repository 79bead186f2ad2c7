"""Replays FLV tags (written by the ffmpeg CLI) to our RTMP server, paced to real time,
with the scripted publisher's command sequence: the publisher a test needs when no real
client does it, e.g. new sequence headers in the middle of a publication."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from origin.rtmp_chunk import MessageType
from origin.rtmp_protocol import HANDSHAKE_SIZE
from tests.rtmp_client import ScriptedPublisher, handshake_c0c1, handshake_c2


@dataclass(frozen=True)
class Tag:
    type_id: int  # 8 audio, 9 video, 18 script data
    timestamp: int  # milliseconds
    body: bytes


def read_flv(path: Path, shift_ms: int = 0) -> list[Tag]:
    data = path.read_bytes()
    pos = int.from_bytes(data[5:9], "big") + 4  # header, then PreviousTagSize0
    tags = []
    while pos + 11 <= len(data):
        type_id = data[pos]
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        ts = int.from_bytes(data[pos + 4 : pos + 7], "big") | (data[pos + 7] << 24)
        tags.append(Tag(type_id, ts + shift_ms, data[pos + 11 : pos + 11 + size]))
        pos += 11 + size + 4
    return tags


async def replay(port: int, key: str, tags: list[Tag]) -> bytes:
    """Publish ``tags`` (media only) as stream ``key``; returns what the server sent
    (everything, when the server ends the publication first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()
    try:
        writer.write(handshake_c0c1())
        s0s1s2 = await reader.readexactly(1 + 2 * HANDSHAKE_SIZE)
        pub = ScriptedPublisher(chunk_size=4096)
        writer.write(handshake_c2(s0s1s2[1 : 1 + HANDSHAKE_SIZE]))
        writer.write(pub.obs_connect_sequence(key).obs_publish_sequence(key).take())
        while b"NetStream.Publish.Start" not in received:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, f"server closed before the publish started: {bytes(received)!r}"
            received += chunk
        listener = asyncio.create_task(_collect(reader, received))
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for tag in tags:
                if tag.type_id not in (MessageType.AUDIO, MessageType.VIDEO):
                    continue
                delay = start + tag.timestamp / 1000 - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if listener.done():
                    break  # the server ended the publication and closed
                writer.write(pub.media(tag.type_id, tag.timestamp, tag.body).take())
                await writer.drain()
            else:
                writer.write(pub.command("FCUnpublish", 6.0, None, key).take())
                writer.write(pub.command("deleteStream", 7.0, None, 1.0).take())
                await writer.drain()
        except ConnectionError:
            pass
        await asyncio.wait([listener], timeout=5)
        listener.cancel()
    finally:
        writer.close()
    return bytes(received)


async def _collect(reader: asyncio.StreamReader, into: bytearray) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            into += chunk
