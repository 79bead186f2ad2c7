"""Contributor-network coordinator, run by the origin: node registry, usage receipts,
client beacons, the per-epoch rewards ledger (SQLite, append-only) and signed exports.

API (JSON; signed messages are ``{"body": {...}, "sig": base64 Ed25519}``):

- ``POST /api/nodes`` register: body ``{"kind": "register", "node", "pubkey", "url",
  "capacity": {"disk_free", "bandwidth", "cpus", "gpu", "plugins"}, "ts"}``. The signature
  proves the key; ``ts`` must be within ``max_skew`` of our clock and newer than the node's
  last signed message, so a captured registration cannot be replayed.
- ``POST /api/nodes/ID/heartbeat`` and ``/leave``: signed ``{"kind", "node", "ts"}``.
- ``GET /api/nodes`` (live = heard within ``node_ttl``), ``GET /api/nodes/ID`` (chain head,
  rejections).
- ``POST /api/receipts``: a signed receipt (``meshcast/receipts.py``). Checked: signature
  with the registered key, chain (seq = last + 1, prev = hash of last; replays and forks
  are refused with 409 and recorded), period sanity (no overlap, not in the future).
  Accepted receipts count in exactly one epoch, the one their period ends in; one that
  arrives after that epoch closed is kept in the chain but flagged ``late`` and never counts.
- ``POST /api/beacons``: ``{"edge": URL, "stream": "live/NAME", "bytes", "period": [t0, t1],
  "viewer"}`` from players, unauthenticated (see the trust model below).
- ``GET /api/rewards[?node=ID]``, ``GET /api/epochs``, ``GET /api/epochs/N/export``,
  ``GET /api/coordinator`` (our public key and the reward parameters).
- ``POST /api/inference``, ``GET /api/inference/ID``: the inference marketplace
  (``origin/inference.py``: jobs placed on capable nodes, retried, metered, spot-checked).

Verification is one ``Verifier`` per contribution kind, run when an epoch closes:

- ``bandwidth`` (here): claimed bytes per (node, stream) against two independent signals:
  client beacons (bytes each viewer got from that edge; evidence = beacon bytes / sample
  rate) and fetch logs (the origin records the bytes it sent to each edge, named by the
  ``X-Meshcast-Peer`` header edges send upstream, and each edge's receipts say what it
  sent to which peer: an edge cannot serve a stream that it, by both accounts, never
  fetched). Formula in ``meshcast/rewards.py``. Bytes sent to peers are evidence for the
  fetching peer, not rewarded: paying for internal fill traffic invites ping-pong between
  colluding nodes.
- ``storage`` (``origin/storage_challenges.py``): storing nodes commit to their chunk
  inventory in every receipt (a Merkle sum tree root); the coordinator challenges random
  byte offsets of the newest commitment and checks the returned chunk and path;
  ``stored_byte_seconds`` verify by the share of challenges passed.
- ``inference`` (``origin/inference.py``, ``InferenceVerifier``): the seconds a node claims
  per execution are bounded by the coordinator's own metering (dispatch to answer) of the
  executions it saw that node complete; unknown, already paid, spot-check-failed and
  disputed executions earn nothing, and the line scales by the share of spot checks passed
  (the marketplace re-executes a sample of jobs on another node and compares outputs).

Trust model of beacons: anyone can send them, so they are only evidence in aggregate:
rate-limited per client address, capped in size, and a node's claims are capped to them,
never raised by them. Each client address has a byte budget per epoch
(``beacon_address_rate`` x epoch length, 16 viewers at 8 Mbit/s by default), so a node
that forges beacons for itself can inflate by at most that much per address it controls,
and only for streams it really fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from meshcast.bodies import read_json
from meshcast.config import NetworkConfig
from meshcast.events import RECEIPT_ACCEPTED, EventBus
from meshcast.http import json_error
from meshcast.receipts import ChainHead, Receipt, ReceiptRejected, check_next, parse_receipt
from meshcast.refused import Refused
from meshcast.rewards import (
    RewardParams,
    bandwidth_verified,
    claims_of,
    node_weights,
    pool_size,
    split_rewards,
)
from meshcast.signing import (
    COORDINATOR_KEY_FILE,
    NodeKey,
    SignatureError,
    canonical_json,
    node_id_for,
    verify_object,
)
from origin.inference import InferenceVerifier, Marketplace
from origin.storage_challenges import SCHEMA as CHALLENGE_SCHEMA
from origin.storage_challenges import ChallengeResult, StorageChallenger, StorageVerifier

log = logging.getLogger(__name__)

DB_FILE: Final = "network.sqlite"
MAX_BODY: Final = 256 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
  node TEXT PRIMARY KEY, pubkey TEXT NOT NULL, url TEXT NOT NULL, capacity TEXT NOT NULL,
  registered REAL NOT NULL, last_ts REAL NOT NULL, last_seen REAL NOT NULL, left_at REAL);
CREATE TABLE IF NOT EXISTS receipts (
  node TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL UNIQUE, prev TEXT NOT NULL,
  period_start REAL NOT NULL, period_end REAL NOT NULL, epoch INTEGER NOT NULL,
  late INTEGER NOT NULL, served INTEGER NOT NULL, body TEXT NOT NULL, sig TEXT NOT NULL,
  received REAL NOT NULL, PRIMARY KEY (node, seq));
CREATE TABLE IF NOT EXISTS rejections (
  id INTEGER PRIMARY KEY, node TEXT, seq INTEGER, code INTEGER NOT NULL, reason TEXT NOT NULL,
  received REAL NOT NULL, body TEXT);
CREATE TABLE IF NOT EXISTS peer_log (
  server TEXT NOT NULL, requester TEXT NOT NULL, stream TEXT NOT NULL, bytes INTEGER NOT NULL,
  period_end REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fetch_log (
  url TEXT NOT NULL, stream TEXT NOT NULL, bytes INTEGER NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS beacons (
  id INTEGER PRIMARY KEY, node TEXT NOT NULL, stream TEXT NOT NULL, bytes INTEGER NOT NULL,
  viewer TEXT NOT NULL, client TEXT NOT NULL, period_end REAL NOT NULL,
  epoch INTEGER NOT NULL, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS beacons_epoch ON beacons (epoch);
CREATE INDEX IF NOT EXISTS beacons_client ON beacons (client, epoch);
CREATE INDEX IF NOT EXISTS receipts_epoch ON receipts (epoch, late);
CREATE TABLE IF NOT EXISTS epochs (
  epoch INTEGER PRIMARY KEY, start REAL NOT NULL, end REAL NOT NULL, closed REAL NOT NULL,
  pool INTEGER NOT NULL, demand INTEGER NOT NULL, supply INTEGER NOT NULL,
  export TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lines (
  epoch INTEGER NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL, stream TEXT NOT NULL,
  claimed INTEGER NOT NULL, evidence INTEGER NOT NULL, fetched INTEGER NOT NULL,
  verified INTEGER NOT NULL, verifier INTEGER NOT NULL, flags TEXT NOT NULL,
  passed INTEGER NOT NULL DEFAULT 0, checks INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (epoch, node, kind, stream));
CREATE TABLE IF NOT EXISTS rewards (
  epoch INTEGER NOT NULL, node TEXT NOT NULL, weight TEXT NOT NULL, reward INTEGER NOT NULL,
  PRIMARY KEY (epoch, node));
"""
# The ledger is append-only: the database itself refuses to rewrite history.
_APPEND_ONLY = ("receipts", "epochs", "lines", "rewards", "challenges")
_TRIGGERS = "".join(
    f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op} BEFORE {op.upper()} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;\n"
    for t in _APPEND_ONLY
    for op in ("update", "delete")
)


class Rejected(Refused):
    """A coordinator request refused (registration, heartbeat, receipt, beacon)."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    node: str
    pubkey: str
    url: str
    capacity: dict[str, Any]
    registered: float
    last_ts: float
    last_seen: float
    left_at: float | None

    def live(self, now: float, ttl: float) -> bool:
        return self.left_at is None and now - self.last_seen <= ttl

    def to_json(self, now: float, ttl: float) -> dict[str, Any]:
        return {
            "node": self.node,
            "pubkey": self.pubkey,
            "url": self.url,
            "capacity": self.capacity,
            "registered": self.registered,
            "last_seen": self.last_seen,
            "live": self.live(now, ttl),
        }


@dataclass(frozen=True, slots=True)
class Line:
    node: str
    kind: str
    stream: str
    claimed: int
    evidence: int = 0
    fetched: int = 0
    verified: int = 0
    verifier: bool = True
    flags: tuple[str, ...] = ()
    # Checks the coordinator ran itself (storage challenges, inference spot checks).
    passed: int = 0
    checks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": self.kind,
            "stream": self.stream,
            "claimed": self.claimed,
            "evidence": self.evidence,
            "fetched": self.fetched,
            "verified": self.verified,
            "verifier": self.verifier,
            "flags": list(self.flags),
            "passed": self.passed,
            "checks": self.checks,
        }


@dataclass
class EpochEvidence:
    """What a ``Verifier`` sees when an epoch closes."""

    epoch: int
    start: float
    end: float
    receipts: list[Receipt]
    nodes: dict[str, NodeRecord]
    db: sqlite3.Connection
    params: RewardParams
    claims: dict[tuple[str, str, str], int] = field(default_factory=dict)


class Verifier(Protocol):
    """Turns one kind's claims of an epoch into verified lines using independent evidence.
    Storage (chunk challenges) and inference (spot re-execution) plug in here."""

    kind: str

    def verify(self, evidence: EpochEvidence) -> list[Line]: ...


class BandwidthVerifier:
    kind = "bandwidth"

    def verify(self, ev: EpochEvidence) -> list[Line]:
        beacons: dict[tuple[str, str], int] = {}
        for node, stream, total in ev.db.execute(
            "SELECT node, stream, SUM(bytes) FROM beacons WHERE epoch = ? GROUP BY node, stream",
            (ev.epoch,),
        ):
            beacons[(node, stream)] = total
        rate = Fraction(ev.params.beacon_sample_rate)
        lines = []
        for (node, kind, stream), claimed in sorted(ev.claims.items()):
            if kind != self.kind:
                continue
            evidence = math.floor(beacons.get((node, stream), 0) / rate)
            fetched = self._fetched(ev, node, stream)
            verified = bandwidth_verified(claimed, evidence, fetched, ev.params.tolerance)
            flags: tuple[str, ...] = ()
            if claimed and not fetched:
                flags = ("never_fetched",)
            elif verified < claimed:
                flags = ("inflated",)
            line = Line(node, kind, stream, claimed, evidence, fetched, verified, flags=flags)
            lines.append(line)
        return lines

    def _fetched(self, ev: EpochEvidence, node: str, stream: str) -> int:
        record = ev.nodes.get(node)
        if record is None:
            return 0
        (origin,) = ev.db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM fetch_log WHERE url = ? AND stream = ? AND ts < ?",
            (record.url, stream, ev.end),
        ).fetchone()
        (peers,) = ev.db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM peer_log WHERE requester = ? AND stream = ? "
            "AND server != ? AND period_end < ?",
            (record.url, stream, node, ev.end),
        ).fetchone()
        return int(origin) + int(peers)


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._state: dict[str, tuple[float, float]] = {}

    def allow(self, who: str) -> bool:
        now = self.clock()
        tokens, at = self._state.get(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if len(self._state) > 100_000:
            self._state.clear()  # bounded memory under an address-spraying flood
        if tokens < 1:
            self._state[who] = (tokens, now)
            return False
        self._state[who] = (tokens - 1, now)
        return True


class Coordinator:
    def __init__(
        self,
        data_dir: Path,
        config: NetworkConfig,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        verifiers: Sequence[Verifier] | None = None,
    ) -> None:
        self.config = config
        self.params = config.rewards
        self.bus = bus
        self.clock = clock
        if verifiers is None:
            verifiers = (BandwidthVerifier(), StorageVerifier(), InferenceVerifier())
        self.verifiers = {v.kind: v for v in verifiers}
        data_dir.mkdir(parents=True, exist_ok=True)
        self.key = NodeKey.load_or_create(data_dir / COORDINATOR_KEY_FILE)
        # Reentrant: close_due holds it across a whole close; close() waits for that.
        self._lock = threading.RLock()
        self.db = sqlite3.connect(data_dir / DB_FILE, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: no fsync per receipt (x10 receipts/s); a power cut may lose the last
        # commits, which the edges resend from their journals (edge/network.py _resync).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA + CHALLENGE_SCHEMA + _TRIGGERS)
        _migrate(self.db)
        self._fetches: dict[tuple[str, str], int] = {}
        self._fetches_since = 0.0
        self._fetch_lock = threading.Lock()
        self._beacon_limit = TokenBucket(config.beacon_rate, config.beacon_burst, time.monotonic)
        self._task: asyncio.Task[None] | None = None
        self._shut = False
        self.challenger = StorageChallenger(self)
        self.inference = Marketplace(self)

    # ---- epochs -----------------------------------------------------------------------

    def epoch_of(self, t: float) -> int:
        return math.floor(t / self.params.epoch_seconds)

    def epoch_bounds(self, epoch: int) -> tuple[float, float]:
        length = self.params.epoch_seconds
        return epoch * length, (epoch + 1) * length

    def _closed(self, epoch: int) -> bool:
        row = self.db.execute("SELECT 1 FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
        return row is not None

    # ---- nodes ------------------------------------------------------------------------

    def _node(self, node: str) -> NodeRecord | None:
        row = self.db.execute("SELECT * FROM nodes WHERE node = ?", (node,)).fetchone()
        if row is None:
            return None
        return NodeRecord(row[0], row[1], row[2], json.loads(row[3]), *row[4:])

    def nodes(self) -> list[NodeRecord]:
        with self._lock:
            rows = self.db.execute("SELECT node FROM nodes ORDER BY registered").fetchall()
            return [r for (n,) in rows if (r := self._node(n)) is not None]

    def _signed(self, envelope: Any, kind: str) -> dict[str, Any]:
        if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), dict):
            raise Rejected(400, "expected {'body': {...}, 'sig': ...}")
        body: dict[str, Any] = envelope["body"]
        if body.get("kind") != kind:
            raise Rejected(400, f"expected a signed {kind!r} message")
        ts = body.get("ts")
        if not isinstance(ts, int | float) or abs(ts - self.clock()) > self.config.max_skew:
            raise Rejected(400, f"ts must be within {self.config.max_skew:.0f} s of our clock")
        return body

    def register(self, envelope: Any) -> dict[str, Any]:
        body = self._signed(envelope, "register")
        pubkey, node, url = body.get("pubkey"), body.get("node"), body.get("url")
        capacity = body.get("capacity")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise Rejected(400, "url must be an http(s) URL")
        if not isinstance(capacity, dict):
            raise Rejected(400, "capacity must be an object")
        try:
            if not isinstance(pubkey, str) or node_id_for(pubkey) != node:
                raise Rejected(400, "node id is not the hash of the public key")
            verify_object(pubkey, body, envelope.get("sig"))
        except SignatureError as exc:
            raise Rejected(401, f"registration signature: {exc}") from exc
        now = self.clock()
        with self._lock:
            existing = self._node(node)
            if existing is not None and body["ts"] <= existing.last_ts:
                raise Rejected(409, "replay: registration is not newer than the last message")
            for other in self.db.execute(
                "SELECT node FROM nodes WHERE url = ? AND node != ?", (url, node)
            ).fetchall():
                rec = self._node(other[0])
                if rec is not None and rec.live(now, self.config.node_ttl):
                    raise Rejected(409, f"{url} belongs to live node {rec.node}")
            self.db.execute(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (node) DO "
                "UPDATE SET url = excluded.url, capacity = excluded.capacity, "
                "last_ts = excluded.last_ts, last_seen = excluded.last_seen, left_at = NULL",
                (node, pubkey, url, json.dumps(capacity), now, body["ts"], now),
            )
            head = self._head(node)
        log.info("coordinator: node %s registered at %s", node, url)
        return {
            "node": node,
            "last_seq": head.seq,
            "last_hash": head.hash,
            "heartbeat_s": self.config.node_ttl / 3,
            "coordinator": self.key.public_key,
        }

    def _authenticated(self, node_id: str, envelope: Any, kind: str) -> NodeRecord:
        body = self._signed(envelope, kind)
        record = self._node(node_id)
        if record is None or body.get("node") != node_id:
            raise Rejected(404, f"unknown node {node_id}: register first")
        try:
            verify_object(record.pubkey, body, envelope.get("sig"))
        except SignatureError as exc:
            raise Rejected(401, f"{kind} signature: {exc}") from exc
        if body["ts"] <= record.last_ts:
            raise Rejected(409, f"replay: {kind} is not newer than the last message")
        return record

    def heartbeat(self, node_id: str, envelope: Any, kind: str = "heartbeat") -> None:
        with self._lock:
            record = self._authenticated(node_id, envelope, kind)
            left = self.clock() if kind == "leave" else None
            self.db.execute(
                "UPDATE nodes SET last_ts = ?, last_seen = ?, left_at = ? WHERE node = ?",
                (envelope["body"]["ts"], self.clock(), left, record.node),
            )

    def _head(self, node: str) -> ChainHead:
        row = self.db.execute(
            "SELECT seq, hash, period_end FROM receipts WHERE node = ? ORDER BY seq DESC LIMIT 1",
            (node,),
        ).fetchone()
        return ChainHead(*row) if row else ChainHead()

    def last_receipt_body(self, node: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute(
                "SELECT body FROM receipts WHERE node = ? ORDER BY seq DESC LIMIT 1", (node,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def record_challenges(self, results: Sequence[ChallengeResult]) -> None:
        now = self.clock()
        epoch = self.epoch_of(now)
        with self._lock:
            if self._shut:
                return
            self.db.executemany(
                "INSERT INTO challenges (node, root, offset, digest, ok, reason, seconds, ts, "
                "epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.node, r.root, r.offset, r.digest, r.ok, r.reason, r.seconds, now, epoch)
                    for r in results
                ],
            )

    def node_status(self, node: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._node(node)
            if record is None:
                return None
            head = self._head(node)
            rejections = [
                {"seq": seq, "code": code, "reason": reason, "at": at}
                for seq, code, reason, at in self.db.execute(
                    "SELECT seq, code, reason, received FROM rejections WHERE node = ? "
                    "ORDER BY id DESC LIMIT 20",
                    (node,),
                )
            ]
            (count,) = self.db.execute(
                "SELECT COUNT(*) FROM rejections WHERE node = ?", (node,)
            ).fetchone()
        out = record.to_json(self.clock(), self.config.node_ttl)
        out |= {"last_seq": head.seq, "last_hash": head.hash, "rejected": count}
        out["rejections"] = rejections
        out["storage"] = self._storage_status(node)
        return out

    def _storage_status(self, node: str) -> dict[str, Any] | None:
        """The newest inventory commitment and how the node did on its challenges."""
        body = self.last_receipt_body(node)
        commitment = body.get("storage") if body else None
        passed, checks = self.db.execute(
            "SELECT COALESCE(SUM(ok), 0), COUNT(*) FROM challenges WHERE node = ?", (node,)
        ).fetchone()
        if commitment is None and not checks:
            return None
        last_failure = self.db.execute(
            "SELECT reason, ts FROM challenges WHERE node = ? AND ok = 0 ORDER BY id DESC LIMIT 1",
            (node,),
        ).fetchone()
        return {
            "commitment": commitment,
            "challenges": {"passed": passed, "total": checks},
            "last_failure": {"reason": last_failure[0], "at": last_failure[1]}
            if last_failure
            else None,
        }

    # ---- receipts ---------------------------------------------------------------------

    def accept_receipt(self, envelope: Any) -> dict[str, Any]:
        body = envelope.get("body") if isinstance(envelope, dict) else None
        node = body.get("node") if isinstance(body, dict) else None
        seq = body.get("seq") if isinstance(body, dict) else None
        with self._lock:
            try:
                result = self._accept(envelope)
            except (Rejected, ReceiptRejected) as exc:
                code = exc.code
                self.db.execute(
                    "INSERT INTO rejections (node, seq, code, reason, received, body) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        node if isinstance(node, str) else None,
                        seq if type(seq) is int else None,
                        code,
                        str(exc),
                        self.clock(),
                        json.dumps(envelope)[:MAX_BODY],
                    ),
                )
                log.warning("coordinator: receipt %s#%s rejected: %s", node, seq, exc)
                raise Rejected(code, str(exc)) from exc
        if self.bus is not None:
            self.bus.publish(RECEIPT_ACCEPTED, **result)
        return result

    def _accept(self, envelope: Any) -> dict[str, Any]:
        if not isinstance(envelope, dict) or not isinstance(envelope.get("sig"), str):
            raise Rejected(400, "expected {'body': {...}, 'sig': ...}")
        receipt = parse_receipt(envelope.get("body"))
        record = self._node(receipt.node)
        if record is None:
            raise Rejected(404, f"unknown node {receipt.node}: register first")
        try:
            verify_object(record.pubkey, receipt.body, envelope["sig"])
        except SignatureError as exc:
            raise Rejected(401, f"bad signature: {exc}") from exc
        now = self.clock()
        check_next(
            self._head(receipt.node), receipt, now, self.config.max_skew, record.registered - 1
        )
        epoch = self.epoch_of(receipt.period_end)
        late = self._closed(epoch)
        self.db.execute("BEGIN")
        try:
            self.db.execute(
                "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    receipt.node,
                    receipt.seq,
                    receipt.hash,
                    receipt.prev,
                    receipt.period_start,
                    receipt.period_end,
                    epoch,
                    int(late),
                    receipt.served_total,
                    canonical_json(receipt.body).decode(),
                    envelope["sig"],
                    now,
                ),
            )
            self.db.executemany(
                "INSERT INTO peer_log VALUES (?, ?, ?, ?, ?)",
                [
                    (receipt.node, requester, stream, n, receipt.period_end)
                    for stream, by_peer in receipt.peer_served.items()
                    for requester, n in by_peer.items()
                ],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return {
            "node": receipt.node,
            "seq": receipt.seq,
            "hash": receipt.hash,
            "epoch": epoch,
            "late": late,
            "served": receipt.served_total,
        }

    # ---- independent signals ----------------------------------------------------------

    def record_fetch(self, peer_url: str, path: str, size: int) -> None:
        """The origin sent ``size`` bytes of ``path`` to the edge at ``peer_url`` (called
        on the event loop per response: just a dict update, flushed in batches)."""
        parts = path.split("/", 3)
        if len(parts) < 4 or size <= 0:
            return
        key = (peer_url.rstrip("/")[:300], f"{parts[1]}/{parts[2]}")
        with self._fetch_lock:  # uncontended but for a flush in a worker thread
            if not self._fetches:
                self._fetches_since = self.clock()
            self._fetches[key] = self._fetches.get(key, 0) + size

    def flush_fetches(self) -> None:
        with self._fetch_lock:
            pending, self._fetches = self._fetches, {}
            # Stamped with the batch's first fetch: a flush at epoch close must not push
            # the evidence past the epoch it belongs to.
            now = self._fetches_since
        if not pending:
            return
        with self._lock:
            self.db.executemany(
                "INSERT INTO fetch_log VALUES (?, ?, ?, ?)",
                [(url, stream, n, now) for (url, stream), n in pending.items()],
            )

    def accept_beacon(self, raw: Any, client: str) -> dict[str, Any]:
        if not self._beacon_limit.allow(client):
            raise Rejected(429, "too many beacons from this address")
        if not isinstance(raw, dict):
            raise Rejected(400, "beacon must be an object")
        edge, stream, size = raw.get("edge"), raw.get("stream"), raw.get("bytes")
        viewer, period = raw.get("viewer", ""), raw.get("period")
        if not isinstance(edge, str) or not isinstance(stream, str) or stream.count("/") != 1:
            raise Rejected(400, "edge (URL) and stream ('live/NAME') are required")
        if type(size) is not int or not 0 <= size <= self.config.beacon_max_bytes:
            raise Rejected(400, f"bytes must be an integer in 0..{self.config.beacon_max_bytes}")
        if not isinstance(viewer, str) or len(viewer) > 64:
            raise Rejected(400, "viewer must be a string of at most 64 characters")
        if (
            not isinstance(period, list)
            or len(period) != 2
            or not all(type(t) in (int, float) and math.isfinite(t) for t in period)
            or period[1] < period[0]
        ):
            raise Rejected(400, "period must be [start, end] in unix seconds")
        now = self.clock()
        if not now - self.params.epoch_seconds <= period[1] <= now + self.config.max_skew:
            raise Rejected(400, "period end is too old or in the future")
        epoch = self.epoch_of(float(period[1]))
        with self._lock:
            row = self.db.execute(
                "SELECT node FROM nodes WHERE url = ? ORDER BY last_seen DESC LIMIT 1",
                (edge.rstrip("/"),),
            ).fetchone()
            if row is None:
                raise Rejected(404, f"no registered node at {edge}")
            if self._closed(epoch):
                return {"counted": False, "reason": f"epoch {epoch} is closed"}
            (sent,) = self.db.execute(
                "SELECT COALESCE(SUM(bytes), 0) FROM beacons WHERE client = ? AND epoch = ?",
                (client, epoch),
            ).fetchone()
            budget = self.config.beacon_address_rate * self.params.epoch_seconds
            if sent + size > budget:
                raise Rejected(429, "this address reported more bytes than its epoch budget")
            self.db.execute(
                "INSERT INTO beacons (node, stream, bytes, viewer, client, period_end, epoch, "
                "received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row[0], stream, size, viewer, client, float(period[1]), epoch, now),
            )
        return {"counted": True, "node": row[0], "epoch": epoch}

    # ---- closing epochs ---------------------------------------------------------------

    def close_due(self) -> list[int]:
        """Close every epoch whose end is ``grace`` seconds past; returns those closed."""
        closed: list[int] = []
        with self._lock:
            if self._shut:
                return closed
            self.flush_fetches()
            now = self.clock()
            (last,) = self.db.execute("SELECT MAX(epoch) FROM epochs").fetchone()
            if last is None:
                (first,) = self.db.execute("SELECT MIN(epoch) FROM receipts").fetchone()
                if first is None:
                    return closed
                last = first - 1
            epoch = last + 1
            while self.epoch_bounds(epoch)[1] + self.config.close_grace <= now:
                self.close_epoch(epoch)
                closed.append(epoch)
                epoch += 1
        return closed

    def close_epoch(self, epoch: int) -> dict[str, Any]:
        """Close ``epoch`` once; a second call returns the stored result unchanged."""
        with self._lock:
            row = self.db.execute("SELECT export FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
            if row is not None:
                stored: dict[str, Any] = json.loads(row[0])
                return stored
            return self._close(epoch)

    def _close(self, epoch: int) -> dict[str, Any]:
        start, end = self.epoch_bounds(epoch)
        rows = self.db.execute(
            "SELECT body, sig FROM receipts WHERE epoch = ? AND late = 0 ORDER BY node, seq",
            (epoch,),
        ).fetchall()
        envelopes = [{"body": json.loads(b), "sig": s} for b, s in rows]
        receipts = [parse_receipt(e["body"]) for e in envelopes]
        node_ids = sorted({r.node for r in receipts})
        nodes = {n: rec for n in node_ids if (rec := self._node(n)) is not None}
        claims = claims_of([e["body"] for e in envelopes])
        evidence = EpochEvidence(epoch, start, end, receipts, nodes, self.db, self.params, claims)
        lines: list[Line] = []
        for verifier in self.verifiers.values():
            lines += verifier.verify(evidence)
        for (node, kind, stream), claimed in sorted(claims.items()):
            if kind not in self.verifiers:
                # A kind this coordinator was built without a verifier for: recorded,
                # unpaid.
                flags = (f"no verifier for {kind}",)
                lines.append(Line(node, kind, stream, claimed, verifier=False, flags=flags))
        line_json = [ln.to_json() for ln in lines]
        demand = sum(ln.verified for ln in lines if ln.kind == "bandwidth")
        bandwidth = {n: int(rec.capacity.get("bandwidth", 0)) for n, rec in nodes.items()}
        supply = sum(bandwidth.values()) * math.ceil(self.params.epoch_seconds)
        pool = pool_size(self.params, demand, supply)
        weights = node_weights(line_json, self.params)
        rewards = split_rewards(self.params, pool, weights)
        reward_rows = []
        for node in node_ids:
            w = sum((weights.get(k, {}).get(node, Fraction(0)) for k in weights), Fraction(0))
            reward_rows.append({"node": node, "weight": str(w), "reward": rewards.get(node, 0)})
        body = {
            "epoch": epoch,
            "start": start,
            "end": end,
            "closed": round(self.clock(), 3),
            "params": self.params.to_json(),
            "coordinator": self.key.public_key,
            "nodes": {
                n: {"pubkey": rec.pubkey, "url": rec.url, "bandwidth": bandwidth[n]}
                for n, rec in nodes.items()
            },
            "lines": line_json,
            "rewards": reward_rows,
            "demand": demand,
            "supply": supply,
            "pool": pool,
            "receipts": envelopes,
        }
        export = {"body": body, "sig": self.key.sign_object(body)}
        self.db.execute("BEGIN")
        try:
            self.db.execute(
                "INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (epoch, start, end, self.clock(), pool, demand, supply, json.dumps(export)),
            )
            self.db.executemany(
                "INSERT INTO lines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [line_row(epoch, ln) for ln in lines],
            )
            self.db.executemany(
                "INSERT INTO rewards VALUES (?, ?, ?, ?)",
                [(epoch, r["node"], r["weight"], r["reward"]) for r in reward_rows],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        flagged = sorted({ln.node for ln in lines if ln.flags and ln.verifier})
        log.info(
            "coordinator: epoch %d closed: %d nodes, %d receipts, pool %d, flagged %s",
            epoch, len(nodes), len(envelopes), pool, flagged or "none",
        )  # fmt: skip
        return export

    # ---- reading the ledger -----------------------------------------------------------

    def export(self, epoch: int) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT export FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
        return json.loads(row[0]) if row else None

    def epochs(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.db.execute(
                "SELECT epoch, start, end, closed, pool, demand, supply FROM epochs ORDER BY epoch"
            ).fetchall()
        keys = ("epoch", "start", "end", "closed", "pool", "demand", "supply")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def rewards(self, node: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return ledger_rows(self.db, node)

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        every = min(5.0, self.params.epoch_seconds / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self.close_due)
            except Exception:
                log.exception("coordinator: closing epochs failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="coordinator")
        self.challenger.start()
        self.inference.start()

    async def close(self) -> None:
        await self.challenger.close()
        await self.inference.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.flush_fetches)
        with self._lock:
            self._shut = True
            self.db.close()


def _migrate(db: sqlite3.Connection) -> None:
    """Columns added after the first release (a ledger is never rebuilt)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(lines)")}
    for name in ("passed", "checks"):
        if name not in columns:
            db.execute(f"ALTER TABLE lines ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0")


def line_row(epoch: int, ln: Line) -> tuple[Any, ...]:
    flags = json.dumps(list(ln.flags))
    return (epoch, ln.node, ln.kind, ln.stream, ln.claimed, ln.evidence, ln.fetched,
            ln.verified, int(ln.verifier), flags, ln.passed, ln.checks)  # fmt: skip


def _flags(concatenated: str | None) -> Iterable[str]:
    # GROUP_CONCAT of JSON lists: '["a"]["b"]' -> a, b
    for part in (concatenated or "").replace("][", "]\n[").splitlines():
        yield from json.loads(part)


async def _json_body(request: Request) -> Any:
    try:
        return await read_json(request, MAX_BODY)
    except Refused as exc:  # 413 before reading, 408 when slow, 400
        raise Rejected(exc.code, exc.reason) from None


def coordinator_routes(coordinator: Coordinator) -> list[BaseRoute]:
    c = coordinator

    async def call(fn: Callable[[], Any], status: int = 200) -> Response:
        try:
            result = await asyncio.to_thread(fn)
        except Rejected as exc:
            return json_error(exc.code, exc.reason)
        return JSONResponse(result, status_code=status)

    async def register(request: Request) -> Response:
        try:
            body = await _json_body(request)
        except Rejected as exc:
            return json_error(exc.code, exc.reason)
        return await call(lambda: c.register(body))

    async def list_nodes(request: Request) -> Response:
        now = c.clock()
        nodes = await asyncio.to_thread(c.nodes)
        return JSONResponse({"nodes": [n.to_json(now, c.config.node_ttl) for n in nodes]})

    async def get_node(request: Request) -> Response:
        status = await asyncio.to_thread(c.node_status, request.path_params["node"])
        if status is None:
            return json_error(404, f"unknown node {request.path_params['node']}")
        return JSONResponse(status)

    def signed_update(kind: str) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                body = await _json_body(request)
            except Rejected as exc:
                return json_error(exc.code, exc.reason)
            node = request.path_params["node"]

            def update() -> dict[str, Any]:
                c.heartbeat(node, body, kind)
                return {"ok": True}

            return await call(update)

        return handler

    async def receipts(request: Request) -> Response:
        try:
            body = await _json_body(request)
        except Rejected as exc:
            return json_error(exc.code, exc.reason)
        return await call(lambda: c.accept_receipt(body), 201)

    async def beacons(request: Request) -> Response:
        client = request.client.host if request.client else "-"
        try:
            body = await _json_body(request)
        except Rejected as exc:
            return json_error(exc.code, exc.reason)
        return await call(lambda: c.accept_beacon(body, client), 202)

    async def rewards(request: Request) -> Response:
        node = request.query_params.get("node")
        rows = await asyncio.to_thread(c.rewards, node)
        if node is not None:
            known = await asyncio.to_thread(c.node_status, node)
            if known is None:
                return json_error(404, f"unknown node {node}")
            total = sum(r["reward"] for r in rows)
            return JSONResponse({"node": node, "epochs": rows, "total_reward": total})
        totals: dict[str, int] = {}
        for r in rows:
            totals[r["node"]] = totals.get(r["node"], 0) + r["reward"]
        return JSONResponse({"epochs": rows, "totals": totals})

    async def epochs(request: Request) -> Response:
        closed = await asyncio.to_thread(c.epochs)
        return JSONResponse({"epochs": closed, "current": c.epoch_of(c.clock())})

    async def export(request: Request) -> Response:
        try:
            epoch = int(request.path_params["epoch"])
        except ValueError:
            return json_error(400, "epoch must be an integer")
        doc = await asyncio.to_thread(c.export, epoch)
        if doc is None:
            return json_error(404, f"epoch {epoch} is not closed")
        return JSONResponse(doc)

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "pubkey": c.key.public_key,
                "params": c.params.to_json(),
                "node_ttl": c.config.node_ttl,
                "current_epoch": c.epoch_of(c.clock()),
            }
        )

    return [
        Route("/api/coordinator", info),
        Route("/api/nodes", register, methods=["POST"]),
        Route("/api/nodes", list_nodes, methods=["GET"]),
        Route("/api/nodes/{node}", get_node),
        Route("/api/nodes/{node}/heartbeat", signed_update("heartbeat"), methods=["POST"]),
        Route("/api/nodes/{node}/leave", signed_update("leave"), methods=["POST"]),
        Route("/api/receipts", receipts, methods=["POST"]),
        Route("/api/beacons", beacons, methods=["POST"]),
        Route("/api/rewards", rewards),
        Route("/api/epochs", epochs),
        Route("/api/epochs/{epoch}/export", export),
    ]


def ledger_rows(db: sqlite3.Connection, node: str | None = None) -> list[dict[str, Any]]:
    """One row per (epoch, node): claimed/verified per kind, flags, weight, reward."""
    query = (
        "SELECT r.epoch, e.start, e.end, r.node, r.weight, r.reward FROM rewards r "
        "JOIN epochs e ON e.epoch = r.epoch"
    )
    args: tuple[str, ...] = ()
    if node is not None:
        query += " WHERE r.node = ?"
        args = (node,)
    out = []
    for epoch, start, end, n, weight, reward in db.execute(
        query + " ORDER BY r.epoch, r.node", args
    ).fetchall():
        kinds: dict[str, dict[str, Any]] = {}
        for kind, claimed, verified, flags in db.execute(
            "SELECT kind, SUM(claimed), SUM(verified), GROUP_CONCAT(flags, '') FROM lines "
            "WHERE epoch = ? AND node = ? GROUP BY kind",
            (epoch, n),
        ):
            kinds[kind] = {
                "claimed": claimed,
                "verified": verified,
                "flags": sorted(set(_flags(flags))),
            }
        out.append(
            {
                "epoch": epoch,
                "start": start,
                "end": end,
                "node": n,
                "weight": float(Fraction(weight)),
                "reward": reward,
                "kinds": kinds,
            }
        )
    return out


def read_only_rewards(data_dir: Path, node: str | None = None) -> list[dict[str, Any]]:
    """The ledger of a coordinator's data directory, for ``meshcast rewards --data``."""
    path = data_dir / DB_FILE
    if not path.exists():
        raise FileNotFoundError(f"no ledger at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return ledger_rows(db, node)
    finally:
        db.close()
