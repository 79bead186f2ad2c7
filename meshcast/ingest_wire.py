"""The ingest interface on the wire: how an origin hands a live stream to a transcoder on
another host (``meshcast transcoder``).

Transport choice: one TCP connection per stream, origin -> transcoder, carrying
length-prefixed frames. Media is an ordered stream whose decoder state breaks on any loss,
so it wants TCP's ordering and per-connection backpressure (a slow transcoder slows only
its own stream, and the origin drops video to the next keyframe exactly as it does for a
local worker). NATS carries the control plane (which transcoders exist, their load), not
the media: core NATS is at-most-once with no per-subscriber flow control, and a slow
consumer there is disconnected, not slowed down.

Sans-IO: ``encode(item) -> bytes`` and ``WireDecoder.feed(bytes) -> items``.

Frame: u32 big-endian length, then a one-byte type and its body:
- ``H`` hello: JSON ``{"stream": NAME, "version": 1, "secret": S}``, always first;
- ``V`` / ``A`` video / audio config: u32 JSON length, JSON fields, then extradata;
- ``P`` packet: kind (0 video, 1 audio), keyframe flag, dts, pts (i64), time base
  numerator and denominator (u32), then the data;
- ``E`` end of stream.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Final

from meshcast.ingest import AudioConfig, IngestItem, MediaKind, MediaPacket, VideoConfig

VERSION: Final = 1
MAX_FRAME: Final = 16 * 1024 * 1024  # far above any access unit a live encoder sends
_LEN = struct.Struct(">I")
_PACKET = struct.Struct(">BBqqII")
_KINDS: Final = (MediaKind.VIDEO, MediaKind.AUDIO)


class WireError(ValueError):
    """The peer sent something that is not this protocol."""


@dataclass(frozen=True, slots=True)
class Hello:
    stream: str
    version: int = VERSION
    # Shared secret between origin and transcoder nodes ("" when none is configured).
    secret: str = ""


@dataclass(frozen=True, slots=True)
class End:
    pass


WireItem = Hello | End | IngestItem


def _frame(kind: bytes, body: bytes) -> bytes:
    return _LEN.pack(len(body) + 1) + kind + body


def _config(kind: bytes, config: VideoConfig | AudioConfig) -> bytes:
    fields = {k: v for k, v in asdict(config).items() if k != "extradata"}
    header = json.dumps(fields).encode()
    return _frame(kind, _LEN.pack(len(header)) + header + config.extradata)


def encode(item: WireItem) -> bytes:
    if isinstance(item, MediaPacket):
        tb = item.time_base
        head = _PACKET.pack(
            _KINDS.index(item.kind), item.keyframe, item.dts, item.pts,
            tb.numerator, tb.denominator,
        )  # fmt: skip
        return _frame(b"P", head + item.data)
    if isinstance(item, VideoConfig):
        return _config(b"V", item)
    if isinstance(item, AudioConfig):
        return _config(b"A", item)
    if isinstance(item, Hello):
        hello = {"stream": item.stream, "version": item.version, "secret": item.secret}
        return _frame(b"H", json.dumps(hello).encode())
    return _frame(b"E", b"")


def _decode_config(body: bytes, video: bool) -> VideoConfig | AudioConfig:
    if len(body) < 4:
        raise WireError("config frame too short")
    (n,) = _LEN.unpack_from(body)
    if n > len(body) - 4:
        raise WireError("config header longer than its frame")
    try:
        fields: dict[str, Any] = json.loads(body[4 : 4 + n])
        extradata = body[4 + n :]
        if video:
            return VideoConfig(
                codec=str(fields["codec"]),
                extradata=extradata,
                width=_opt_int(fields.get("width")),
                height=_opt_int(fields.get("height")),
                profile=_opt_str(fields.get("profile")),
                level=_opt_str(fields.get("level")),
                fps=float(fields["fps"]) if fields.get("fps") is not None else None,
            )
        return AudioConfig(
            codec=str(fields["codec"]),
            extradata=extradata,
            sample_rate=_opt_int(fields.get("sample_rate")),
            channels=_opt_int(fields.get("channels")),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"malformed config: {exc}") from exc


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"expected an integer, got {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WireError(f"expected a string, got {value!r}")
    return value


def _decode(kind: int, body: bytes) -> WireItem:
    if kind == ord("P"):
        if len(body) < _PACKET.size:
            raise WireError("packet frame too short")
        k, key, dts, pts, num, den = _PACKET.unpack_from(body)
        if k > 1 or key > 1 or num == 0 or den == 0:
            raise WireError("packet header out of range")
        return MediaPacket(_KINDS[k], body[_PACKET.size :], dts, pts, bool(key), Fraction(num, den))
    if kind == ord("V"):
        return _decode_config(body, True)
    if kind == ord("A"):
        return _decode_config(body, False)
    if kind == ord("H"):
        try:
            hello = json.loads(body)
            stream, version, secret = hello["stream"], hello["version"], hello.get("secret", "")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WireError(f"malformed hello: {exc}") from exc
        if not isinstance(stream, str) or not isinstance(secret, str) or version != VERSION:
            raise WireError(f"unsupported hello (version {version!r})")
        return Hello(stream, version, secret)
    if kind == ord("E") and not body:
        return End()
    raise WireError(f"unknown frame type {kind:#x}")


class WireDecoder:
    """Bytes in, wire items out; the first item must be a Hello."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._greeted = False

    def feed(self, data: bytes) -> list[WireItem]:
        self._buffer += data
        items: list[WireItem] = []
        while len(self._buffer) >= 4:
            (length,) = _LEN.unpack_from(self._buffer)
            if length == 0 or length > MAX_FRAME:
                raise WireError(f"frame length {length} out of range")
            if len(self._buffer) < 4 + length:
                break
            frame = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            item = _decode(frame[0], frame[1:])
            if not self._greeted and not isinstance(item, Hello):
                raise WireError("the first frame must be a hello")
            self._greeted = True
            items.append(item)
        return items

    @property
    def pending(self) -> int:
        return len(self._buffer)
