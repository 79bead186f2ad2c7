"""HTTP caching semantics used by the edge, as plain functions (no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*(\d+)", re.I)


@dataclass(frozen=True, slots=True)
class Freshness:
    store: bool
    ttl: float | None  # None: immutable


def freshness(
    cache_control: str | None, *, immutable_default: bool, default_ttl: float
) -> Freshness:
    """How long an upstream response may be served without asking again."""
    cc = (cache_control or "").lower()
    if "no-store" in cc or "private" in cc:
        return Freshness(False, 0)
    if "immutable" in cc:
        return Freshness(True, None)
    match = _MAX_AGE.search(cc)
    if match:
        return Freshness(True, float(match.group(1)))
    if "no-cache" in cc:
        return Freshness(True, 0)
    return Freshness(True, None if immutable_default else default_ttl)


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range as [start, end) or None for "send everything".

    Multi-range requests get the whole body (RFC 9110 lets a server ignore Range), so
    players never have to parse multipart/byteranges.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        suffix = int(last) if first == "" else None
        start = int(first) if first else 0
        end = int(last) + 1 if last and first else size
    except ValueError:
        return None  # malformed: ignore the header, as the RFC allows
    if suffix is not None:
        if suffix <= 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size
    if start >= size or start < 0 or end <= start:
        raise RangeNotSatisfiable(header)
    return start, min(end, size)


def etag_matches(if_none_match: str | None, etag: str | None) -> bool:
    """Weak comparison, as If-None-Match requires."""
    if not if_none_match or not etag:
        return False
    if if_none_match.strip() == "*":
        return True
    ours = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == ours for tag in if_none_match.split(","))
