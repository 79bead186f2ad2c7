"""tus 1.0 resumable upload headers (https://tus.io/protocols/resumable-upload), as pure
functions: the origin API and ``meshcast vod add`` both use them.

We implement core + ``creation`` + ``termination``. A client POSTs ``Upload-Length`` (and
optional ``Upload-Metadata``), gets a ``Location``, then PATCHes bytes at
``Upload-Offset``; after a lost connection it asks ``HEAD`` for the offset and goes on.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

TUS_VERSION: Final = "1.0.0"
TUS_EXTENSIONS: Final = "creation,termination"
OFFSET_CONTENT_TYPE: Final = "application/offset+octet-stream"
_MAX_HEADER: Final = 8192


class TusError(ValueError):
    """A malformed or unacceptable tus request; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_resumable(value: str | None) -> None:
    """Every request but OPTIONS carries ``Tus-Resumable``; another version is a 412."""
    if value is None:
        raise TusError(412, "missing Tus-Resumable header (this server speaks tus 1.0.0)")
    if value.strip() != TUS_VERSION:
        raise TusError(412, f"unsupported Tus-Resumable {value.strip()[:32]!r}: use 1.0.0")


def parse_non_negative(name: str, value: str | None) -> int:
    """``Upload-Length`` / ``Upload-Offset``: a non-negative decimal integer, nothing else
    (no sign, no spaces inside, no hex), so ``int()``'s leniency cannot sneak in."""
    if value is None:
        raise TusError(400, f"missing {name} header")
    text = value.strip()
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        raise TusError(400, f"invalid {name} {value[:32]!r}: a non-negative integer")
    return int(text)


def parse_metadata(value: str | None) -> dict[str, bytes | None]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional);
    keys are unique, non-empty, without spaces or commas."""
    if value is None or not value.strip():
        return {}
    if len(value) > _MAX_HEADER:
        raise TusError(400, "Upload-Metadata too long")
    out: dict[str, bytes | None] = {}
    for item in value.split(","):
        parts = item.strip().split(" ")
        if len(parts) > 2 or not parts[0] or not parts[0].isascii() or not parts[0].isprintable():
            raise TusError(400, f"invalid Upload-Metadata pair {item.strip()[:40]!r}")
        key = parts[0]
        if key in out:
            raise TusError(400, f"duplicate Upload-Metadata key {key[:40]!r}")
        if len(parts) == 1:
            out[key] = None
            continue
        try:
            out[key] = base64.b64decode(parts[1].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise TusError(400, f"Upload-Metadata value of {key[:40]!r} is not base64") from None
    return out


def encode_metadata(metadata: dict[str, bytes | None]) -> str:
    pairs = []
    for key, value in metadata.items():
        if not key or " " in key or "," in key:
            raise ValueError(f"invalid metadata key {key!r}")
        pairs.append(f"{key} {base64.b64encode(value).decode()}" if value else key)
    return ",".join(pairs)


def filename_from_metadata(metadata: dict[str, bytes | None]) -> str:
    """The uploader's file name, for display only (never a path on our disk)."""
    raw = metadata.get("filename") or b""
    name = raw.decode("utf-8", "replace").replace("/", "_").replace("\\", "_")
    return "".join(c for c in name if c.isprintable())[:200]
