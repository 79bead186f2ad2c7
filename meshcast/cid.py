"""Content identifiers (sans-IO): the raw CIDv1 (codec raw 0x55, multihash sha2-256,
multibase base32 lower, ``bafkrei…``) that pins are named by (``edge/plugins/storage/
pins.py``) and that inference jobs may take as input (``meshcast/inference.py``)."""

from __future__ import annotations

import base64
import binascii
from typing import Final

_CID_PREFIX: Final = bytes([0x01, 0x55, 0x12, 0x20])  # v1, raw, sha2-256, 32 bytes


class BadCid(ValueError):
    pass


def cid_for(sha256: bytes) -> str:
    return "b" + base64.b32encode(_CID_PREFIX + sha256).decode().lower().rstrip("=")


def cid_digest(cid: str) -> bytes:
    """The sha2-256 digest named by a raw CIDv1 (base32); BadCid for anything else."""
    if not cid.startswith("b") or len(cid) > 100:
        raise BadCid("only base32 CIDv1 ('b…') are served here")
    text = cid[1:].upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise BadCid("not base32") from None
    if len(raw) != len(_CID_PREFIX) + 32 or not raw.startswith(_CID_PREFIX):
        raise BadCid("only raw (0x55) sha2-256 CIDv1 are stored here")
    return raw[len(_CID_PREFIX) :]
