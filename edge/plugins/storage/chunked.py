"""``Content-Encoding: aws-chunked`` bodies (SigV4 streaming uploads), sans-IO.

``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n`` … ``0[;…]\\r\\n`` then optional trailer
lines (``x-amz-checksum-crc32:…``) and an empty line. With a signer, every chunk signature
is checked (each chains on the previous one); data is handed out as it arrives and a bad
signature raises at the end of its chunk, so the caller must not commit before ``done``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Final

MAX_LINE: Final = 4096
MAX_CHUNK: Final = 64 * 1024 * 1024
MAX_TRAILERS: Final = 16


class ChunkedError(Exception):
    """Malformed aws-chunked body, or a chunk signature that does not match."""


# signer(previous signature, sha256 hex of the chunk) -> expected signature
ChunkSigner = Callable[[str, str], str]


class AwsChunkedDecoder:
    def __init__(self, signer: ChunkSigner | None = None, seed_signature: str = "") -> None:
        self._signer = signer
        self._previous = seed_signature
        self._buffer = bytearray()
        self._state = "size"
        self._remaining = 0
        self._signature: str | None = None
        self._hash = hashlib.sha256()
        self.trailers: dict[str, str] = {}
        self.decoded = 0
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        """Payload bytes contained in ``data`` (possibly none)."""
        if self.done:
            if data:
                raise ChunkedError("bytes after the end of the aws-chunked body")
            return []
        self._buffer += data
        out: list[bytes] = []
        while not self.done:
            if self._state == "data":
                if not self._buffer:
                    break
                take = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(take)]
                self._remaining -= len(take)
                self._hash.update(take)
                self.decoded += len(take)
                out.append(take)
                if self._remaining == 0:
                    self._state = "crlf"
                continue
            if self._state == "crlf":
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise ChunkedError("chunk data not followed by CRLF")
                del self._buffer[:2]
                self._end_chunk()
                self._state = "size"
                continue
            line = self._line()
            if line is None:
                break
            if self._state == "size":
                self._size_line(line)
            else:
                self._trailer_line(line)
        return out

    def finish(self) -> None:
        """The body ended: raise unless it was complete."""
        if not self.done:
            raise ChunkedError("truncated aws-chunked body")

    def _line(self) -> str | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                raise ChunkedError("aws-chunked line too long")
            return None
        if end > MAX_LINE:
            raise ChunkedError("aws-chunked line too long")
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise ChunkedError("non-ASCII aws-chunked framing") from None

    def _size_line(self, line: str) -> None:
        size_text, _, ext = line.partition(";")
        if not size_text or len(size_text) > 16:
            raise ChunkedError(f"bad chunk size line {line!r}")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ChunkedError(f"bad chunk size {size_text!r}") from None
        if size < 0 or size > MAX_CHUNK or size_text.strip() != size_text:
            raise ChunkedError(f"bad chunk size {size_text!r}")
        self._signature = None
        if ext:
            name, eq, value = ext.partition("=")
            if name != "chunk-signature" or not eq:
                raise ChunkedError(f"unknown chunk extension {ext!r}")
            self._signature = value
        if self._signer is not None and self._signature is None:
            raise ChunkedError("chunk signature missing")
        self._hash = hashlib.sha256()
        self._remaining = size
        if size == 0:
            self._end_chunk()
            self._state = "trailer"
        else:
            self._state = "data"

    def _end_chunk(self) -> None:
        if self._signer is None:
            return
        assert self._signature is not None
        expected = self._signer(self._previous, self._hash.hexdigest())
        if not hmac.compare_digest(expected, self._signature):
            raise ChunkedError("chunk signature does not match")
        self._previous = self._signature

    def _trailer_line(self, line: str) -> None:
        if line == "":
            self.done = True
            if self._buffer:
                raise ChunkedError("bytes after the end of the aws-chunked body")
            return
        name, colon, value = line.partition(":")
        if not colon or not name or len(self.trailers) >= MAX_TRAILERS:
            raise ChunkedError(f"bad trailer {line!r}")
        self.trailers[name.strip().lower()] = value.strip()


def encode(payload: bytes, chunk: int, trailers: dict[str, str] | None = None) -> bytes:
    """Unsigned aws-chunked encoding (tests and our own client)."""
    out = bytearray()
    for i in range(0, len(payload), chunk):
        piece = payload[i : i + chunk]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n"
    for name, value in (trailers or {}).items():
        out += f"{name}:{value}\r\n".encode()
    out += b"\r\n"
    return bytes(out)
