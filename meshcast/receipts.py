"""Signed, hash-chained usage receipts (sans-IO: edges build them, the coordinator and
anyone holding the node's public key check them).

A receipt body::

    {"v": 1, "node": ID, "seq": N, "prev": sha256 of receipt N-1's canonical body (zeros for
     seq 1), "period_start": t0, "period_end": t1, "ts": t,
     "served": {"live/NAME": bytes to viewers},
     "peer_served": {"live/NAME": {"http://peer": bytes sent to that peer}},
     "fetched": {"live/NAME": bytes fetched upstream (origin or peers)},
     "stored_byte_seconds": 0, "inference_seconds": {},
     "storage": {"root", "chunks", "bytes"}}   (only from nodes that store: the inventory
     commitment that storage challenges check, ``meshcast/storage_proofs.py``)

and the envelope sent over the wire is ``{"body": {...}, "sig": base64}``. Because each
body names the hash of the previous one, a node cannot rewrite or drop history without
the fork showing, and a replayed receipt repeats a sequence number already accepted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from meshcast.refused import Refused
from meshcast.signing import ZERO_HASH, NodeKey, canonical_json, sha256_hex
from meshcast.storage_proofs import Commitment

VERSION: Final = 1
MAX_STREAMS: Final = 4096


class ReceiptRejected(Refused):
    """A receipt that does not parse or does not extend its node's chain."""


def _bytes_map(value: Any, what: str) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) > MAX_STREAMS:
        raise ReceiptRejected(400, f"{what} must be an object of at most {MAX_STREAMS} entries")
    for key, n in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise ReceiptRejected(400, f"{what}: bad key {key!r}")
        if type(n) is not int or n < 0:
            raise ReceiptRejected(400, f"{what}[{key}] must be a non-negative integer")
    return dict(value)


def _number(body: Mapping[str, Any], name: str) -> float:
    value = body.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ReceiptRejected(400, f"{name} must be a finite number")
    return float(value)


@dataclass(frozen=True, slots=True)
class Receipt:
    node: str
    seq: int
    prev: str
    period_start: float
    period_end: float
    ts: float
    served: dict[str, int]
    peer_served: dict[str, dict[str, int]]
    fetched: dict[str, int]
    stored_byte_seconds: int
    inference_seconds: dict[str, int]
    body: dict[str, Any] = field(repr=False)
    storage: Commitment | None = None
    hash: str = ""

    @property
    def served_total(self) -> int:
        return sum(self.served.values())


def parse_receipt(body: Any) -> Receipt:
    """Validate the shape of a receipt body (not its signature or place in a chain)."""
    if not isinstance(body, dict):
        raise ReceiptRejected(400, "receipt body must be an object")
    if body.get("v") != VERSION:
        raise ReceiptRejected(400, f"unsupported receipt version {body.get('v')!r}")
    node, seq, prev = body.get("node"), body.get("seq"), body.get("prev")
    if not isinstance(node, str) or not node.startswith("node_"):
        raise ReceiptRejected(400, "node must be a node id")
    if type(seq) is not int or seq < 1:
        raise ReceiptRejected(400, "seq must be an integer >= 1")
    if not isinstance(prev, str) or len(prev) != 64 or set(prev) - set("0123456789abcdef"):
        raise ReceiptRejected(400, "prev must be a sha256 hex digest")
    start, end, ts = _number(body, "period_start"), _number(body, "period_end"), _number(body, "ts")
    if end < start:
        raise ReceiptRejected(400, "period_end is before period_start")
    peer_raw = body.get("peer_served", {})
    if not isinstance(peer_raw, dict) or len(peer_raw) > MAX_STREAMS:
        raise ReceiptRejected(400, "peer_served must be an object")
    peer = {s: _bytes_map(v, f"peer_served[{s}]") for s, v in peer_raw.items()}
    stored = body.get("stored_byte_seconds", 0)
    if type(stored) is not int or stored < 0:
        raise ReceiptRejected(400, "stored_byte_seconds must be a non-negative integer")
    commitment = None
    if "storage" in body:
        try:
            commitment = Commitment.from_json(body["storage"])
        except ValueError as exc:
            raise ReceiptRejected(400, str(exc)) from exc
    return Receipt(
        node=node,
        seq=seq,
        prev=prev,
        period_start=start,
        period_end=end,
        ts=ts,
        served=_bytes_map(body.get("served"), "served"),
        peer_served=peer,
        fetched=_bytes_map(body.get("fetched", {}), "fetched"),
        stored_byte_seconds=stored,
        inference_seconds=_bytes_map(body.get("inference_seconds", {}), "inference_seconds"),
        body=body,
        hash=receipt_hash(body),
        storage=commitment,
    )


def receipt_hash(body: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json(body))


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last accepted receipt of a node (seq 0 and zeros before the first)."""

    seq: int = 0
    hash: str = ZERO_HASH
    period_end: float = 0.0


def check_next(
    head: ChainHead, receipt: Receipt, now: float, max_skew: float, min_start: float = 0.0
) -> None:
    """Raise ReceiptRejected unless ``receipt`` extends the chain ending at ``head``.

    409 for a replay (a seq already accepted) or a fork (right seq, wrong prev): both
    mean a second history for the same node, never a transient error."""
    if receipt.seq <= head.seq:
        raise ReceiptRejected(409, f"replay: seq {receipt.seq} already accepted (last {head.seq})")
    if receipt.seq != head.seq + 1:
        raise ReceiptRejected(409, f"gap: expected seq {head.seq + 1}, got {receipt.seq}")
    if receipt.prev != head.hash:
        raise ReceiptRejected(409, f"fork: prev does not match the hash of seq {head.seq}")
    if receipt.period_end > now + max_skew or receipt.ts > now + max_skew:
        raise ReceiptRejected(400, "period ends in the future")
    floor = head.period_end if head.seq else min_start
    # Periods never overlap: the same bytes cannot be claimed twice.
    if receipt.period_start < floor - 1e-3:
        raise ReceiptRejected(400, f"period overlaps the previous one (starts before {floor})")


def verify_chain(bodies: list[dict[str, Any]], head: ChainHead | None = None) -> ChainHead:
    """Check that ``bodies`` link one to the next (from ``head``); returns the new head.
    Signatures are checked separately (they need the key)."""
    current = head
    for body in bodies:
        receipt = parse_receipt(body)
        if current is not None and (receipt.seq != current.seq + 1 or receipt.prev != current.hash):
            raise ReceiptRejected(409, f"chain broken at seq {receipt.seq}")
        current = ChainHead(receipt.seq, receipt.hash, receipt.period_end)
    if current is None:
        raise ReceiptRejected(400, "no receipts")
    return current


@dataclass
class Usage:
    """Cumulative counters of one edge (what it served, to whom, and what it fetched)."""

    served: dict[str, int] = field(default_factory=dict)
    peer_served: dict[str, dict[str, int]] = field(default_factory=dict)
    fetched: dict[str, int] = field(default_factory=dict)

    def copy(self) -> Usage:
        return Usage(
            dict(self.served),
            {s: dict(p) for s, p in self.peer_served.items()},
            dict(self.fetched),
        )


def _delta(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in now.items()}
    return {k: v for k, v in out.items() if v > 0}


class ReceiptBuilder:
    """Turns snapshots of cumulative ``Usage`` into the next receipt of the chain."""

    def __init__(self, key: NodeKey, head: ChainHead = ChainHead()) -> None:
        self.key = key
        self.head = head
        self._last = Usage()

    def build(
        self,
        usage: Usage,
        now: float,
        period_start: float | None = None,
        storage: Commitment | None = None,
        inference_seconds: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """The next signed envelope; advances the head (the caller persists it).

        ``storage`` is the inventory held now; the period's byte-seconds are its bytes times
        the period's length (the inventory is sampled once per receipt)."""
        snapshot = usage.copy()
        peer: dict[str, dict[str, int]] = {}
        for stream, by_peer in snapshot.peer_served.items():
            d = _delta(by_peer, self._last.peer_served.get(stream, {}))
            if d:
                peer[stream] = d
        start = self.head.period_end if self.head.seq else (period_start or now)
        body: dict[str, Any] = {
            "v": VERSION,
            "node": self.key.node_id,
            "seq": self.head.seq + 1,
            "prev": self.head.hash,
            "period_start": round(start, 3),
            "period_end": round(max(now, start), 3),
            "ts": round(now, 3),
            "served": _delta(snapshot.served, self._last.served),
            "peer_served": peer,
            "fetched": _delta(snapshot.fetched, self._last.fetched),
            "stored_byte_seconds": 0,
            "inference_seconds": dict(inference_seconds or {}),
        }
        if storage is not None:
            span = body["period_end"] - body["period_start"]
            body["stored_byte_seconds"] = math.floor(storage.bytes * span)
            body["storage"] = storage.to_json()
        self._last = snapshot
        self.head = ChainHead(body["seq"], receipt_hash(body), body["period_end"])
        return {"body": body, "sig": self.key.sign_object(body)}
