"""Storage proofs, the coordinator's side: random chunk challenges against the inventory
each storing node commits to in its receipts, and the ``storage`` verifier that turns
the results into verified byte-seconds (protocol: ``meshcast/storage_proofs.py``).

Every ``challenge_interval`` seconds each live node whose newest accepted receipt commits
to stored bytes gets ``challenges_per_round`` challenges at random byte offsets of that
commitment, signed with the coordinator key and sent to ``NODE/_storage/challenge``. An
answer passes when its Merkle path leads to the committed root, its leaf covers the
offset, and its bytes hash to the leaf's digest, within ``challenge_timeout``. Anything
else fails and the reason is recorded: a lost chunk (410), an unknown commitment, a wrong
path or bytes, a timeout, an unreachable node. Results are append-only evidence.

At epoch close, a node's claimed ``stored_byte_seconds`` verify to the claim bounded by
what its signed commitments cover (bytes x period length, so a node cannot claim more
than it committed to), times the share of its challenges it passed in the epoch
(``meshcast.rewards.storage_verified``); never challenged in the epoch: 0. A node that
dropped a share p of its bytes fails about p of its challenges and, with the ledger's
penalty on the unverified rest, loses about twice p of its storage reward.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import httpx

from meshcast.http import error_reason
from meshcast.receipts import parse_receipt
from meshcast.rewards import storage_committed, storage_verified
from meshcast.storage_proofs import (
    PROOF_HEADER,
    Commitment,
    ProofInvalid,
    new_challenge,
    verify_proof,
)

if TYPE_CHECKING:
    from origin.coordinator import Coordinator, EpochEvidence, Line, NodeRecord

log = logging.getLogger(__name__)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS challenges (
  id INTEGER PRIMARY KEY, node TEXT NOT NULL, root TEXT NOT NULL, offset INTEGER NOT NULL,
  digest TEXT, ok INTEGER NOT NULL, reason TEXT NOT NULL, seconds REAL NOT NULL,
  ts REAL NOT NULL, epoch INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS challenges_epoch ON challenges (epoch, node);
"""
# A chunk is at most the storage plugin's chunk size; refuse to buffer more than this.
MAX_ANSWER: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChallengeResult:
    node: str
    root: str
    offset: int
    ok: bool
    reason: str
    seconds: float
    digest: str | None = None


class StorageChallenger:
    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.config = coordinator.config
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    def targets(self) -> list[tuple[NodeRecord, Commitment]]:
        """Live nodes and the newest storage commitment each has in an accepted receipt."""
        now = self.c.clock()
        out = []
        for record in self.c.nodes():
            if not record.live(now, self.config.node_ttl):
                continue
            body = self.c.last_receipt_body(record.node)
            if body is None:
                continue
            storage = parse_receipt(body).storage
            if storage is not None and storage.bytes > 0:
                out.append((record, storage))
        return out

    async def challenge(
        self, client: httpx.AsyncClient, record: NodeRecord, commitment: Commitment
    ) -> ChallengeResult:
        challenge = new_challenge(commitment)
        offset: int = challenge["offset"]
        body = {"kind": "challenge", "node": record.node, "ts": round(time.time(), 3)}
        body |= challenge
        envelope = {"body": body, "sig": self.c.key.sign_object(body)}
        started = time.monotonic()

        def result(ok: bool, reason: str, digest: str | None = None) -> ChallengeResult:
            elapsed = time.monotonic() - started
            root = commitment.root
            return ChallengeResult(record.node, root, offset, ok, reason, elapsed, digest)

        try:
            async with asyncio.timeout(self.config.challenge_timeout):
                async with client.stream(
                    "POST", f"{record.url}/_storage/challenge", json=envelope
                ) as r:
                    data = bytearray()
                    async for part in r.aiter_bytes():
                        data += part
                        if len(data) > MAX_ANSWER:
                            return result(False, f"answer over {MAX_ANSWER} bytes")
        except TimeoutError:
            return result(False, f"no answer within {self.config.challenge_timeout:.0f} s")
        except httpx.HTTPError as exc:
            return result(False, f"unreachable: {exc.__class__.__name__}: {exc}")
        if r.status_code != 200:
            return result(False, f"answered {r.status_code}: {error_reason(bytes(data))}")
        try:
            proof = json.loads(r.headers.get(PROOF_HEADER, ""))
            digest = verify_proof(commitment, offset, proof, bytes(data))
        except ValueError as exc:
            return result(False, f"no proof header: {exc}")
        except ProofInvalid as exc:
            return result(False, f"bad proof: {exc}")
        return result(True, "ok", digest)

    async def round(self) -> list[ChallengeResult]:
        """One round: every target, ``challenges_per_round`` challenges each, recorded."""
        targets = await asyncio.to_thread(self.targets)
        if not targets:
            return []
        client = self._client or httpx.AsyncClient(timeout=self.config.challenge_timeout)
        try:
            results = await asyncio.gather(
                *(
                    self.challenge(client, record, commitment)
                    for record, commitment in targets
                    for _ in range(self.config.challenges_per_round)
                )
            )
        finally:
            if client is not self._client:
                await client.aclose()
        await asyncio.to_thread(self.c.record_challenges, results)
        for res in results:
            if not res.ok:
                log.warning(
                    "coordinator: node %s failed a storage challenge at offset %d: %s",
                    res.node, res.offset, res.reason,
                )  # fmt: skip
        return results

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.config.challenge_interval)
            try:
                await self.round()
            except Exception:
                log.exception("coordinator: storage challenge round failed")

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.config.challenge_timeout)
        self._task = asyncio.create_task(self.run(), name="storage challenges")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class StorageVerifier:
    kind = "storage"

    def verify(self, ev: EpochEvidence) -> list[Line]:
        from origin.coordinator import Line

        committed = storage_committed([r.body for r in ev.receipts])
        lines = []
        for (node, kind, stream), claimed in sorted(ev.claims.items()):
            if kind != self.kind:
                continue
            passed, checks = ev.db.execute(
                "SELECT COALESCE(SUM(ok), 0), COUNT(*) FROM challenges "
                "WHERE epoch = ? AND node = ?",
                (ev.epoch, node),
            ).fetchone()
            bound = committed.get(node, 0)
            verified = storage_verified(claimed, bound, passed, checks, ev.params.tolerance)
            flags: list[str] = []
            if checks == 0:
                flags.append("unchallenged")
            elif passed < checks:
                flags.append("failed_challenges")
            if claimed > bound * (1 + ev.params.tolerance):
                flags.append("inflated")
            line = Line(node, kind, stream, claimed, bound, 0, verified, flags=tuple(flags))
            lines.append(replace(line, passed=int(passed), checks=int(checks)))
        return lines
