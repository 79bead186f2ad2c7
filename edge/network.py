"""An edge's membership in the contributor network (``meshcast edge --join URL``).

The node registers with the coordinator (signed, with its capacity), heartbeats, learns
the other live registered nodes for its peer ring, and every ``receipt_interval`` seconds
signs a usage receipt of what it served since the last one (and the seconds of the
inference-marketplace executions it ran for the coordinator, edge/inference.py). Receipts
are appended to ``NODE_DIR/receipts.jsonl`` before they are sent and re-sent in order until
accepted, so a coordinator outage or an edge restart loses no bytes and never forks the
chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Final

import httpx

from edge.inference import InferenceExecutor
from edge.plugins import EdgeHost, NetworkMembership
from edge.plugins.storage.plugin import StoragePlugin
from edge.plugins.storage.proofs import Prover
from meshcast.config import EdgeConfig
from meshcast.http import error_reason
from meshcast.receipts import ChainHead, ReceiptBuilder, Usage, receipt_hash
from meshcast.signing import NODE_KEY_FILE, NodeKey
from meshcast.storage_proofs import Commitment

log = logging.getLogger(__name__)

RECEIPTS_FILE: Final = "receipts.jsonl"
MAX_PENDING: Final = 10_000


class JoinError(Exception):
    pass


def probe_gpus() -> list[str]:
    """GPU names from ``nvidia-smi -L``; none when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    import subprocess

    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(" (UUID")[0] for line in out.stdout.splitlines() if line.startswith("GPU")]


def load_node_key(node_dir: Path) -> NodeKey:
    path = node_dir / NODE_KEY_FILE
    if not path.exists():
        raise JoinError(f"no node key at {path}: run `meshcast node init --data {node_dir}`")
    return NodeKey.load(path)


class NodeAgent:
    def __init__(self, edge: EdgeHost, config: EdgeConfig, key: NodeKey) -> None:
        assert config.join is not None
        self.edge = edge
        self.config = config
        self.key = key
        self.coordinator = config.join.rstrip("/")
        self.node_dir = config.node_dir or config.cache_dir
        edge.network = NetworkMembership(key.node_id, self.coordinator)
        self.journal = self.node_dir / RECEIPTS_FILE
        self.builder = ReceiptBuilder(key)
        # Marketplace jobs ordered by the coordinator (edge/inference.py).
        self.inference = InferenceExecutor(edge, key)
        edge.add_routes(self.inference.routes())
        self.pending: list[dict[str, Any]] = []
        self.registered = asyncio.Event()
        self._ring_urls: set[str] = set()
        self._last_ts = 0.0
        self._started = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()
        # With the storage plugin, receipts commit to the chunks held (storage proofs).
        self.prover: Prover | None = next(
            (p.prover for p in edge.plugins if isinstance(p, StoragePlugin)), None
        )

    @property
    def client(self) -> httpx.AsyncClient:
        return self.edge.client

    def _ts(self) -> float:
        # Strictly increasing: the coordinator refuses a signed message not newer than the
        # last one (replay protection), and two can be signed within one clock tick.
        ts = max(round(time.time(), 3), round(self._last_ts + 0.001, 3))
        self._last_ts = ts
        return ts

    def _signed(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"body": body, "sig": self.key.sign_object(body)}

    # ---- registration and heartbeats --------------------------------------------------

    async def capacity(self) -> dict[str, Any]:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        gpus = await asyncio.to_thread(probe_gpus)
        return {
            "disk_free": shutil.disk_usage(self.node_dir).free,
            "bandwidth": self.config.bandwidth,
            "cpus": os.cpu_count() or 1,
            "gpu": gpus or None,
            "plugins": list(self.config.plugins),
        }

    async def register(self) -> dict[str, Any]:
        body = {
            "kind": "register",
            "node": self.key.node_id,
            "pubkey": self.key.public_key,
            "url": self.edge.self_url,
            "capacity": await self.capacity(),
            "ts": self._ts(),
        }
        r = await self.client.post(f"{self.coordinator}/api/nodes", json=self._signed(body))
        if r.status_code != 200:
            raise JoinError(f"registration refused ({r.status_code}): {error_reason(r.content)}")
        answer: dict[str, Any] = r.json()
        if self.edge.network is not None and isinstance(answer.get("coordinator"), str):
            # Storage challenges and inference orders must carry this key's signature.
            self.edge.network.coordinator_key = answer["coordinator"]
        self._resume(ChainHead(answer["last_seq"], answer["last_hash"]))
        self.registered.set()
        log.info("edge %s joined %s as %s", self.edge.self_url, self.coordinator, self.key.node_id)
        return answer

    def _resume(self, accepted: ChainHead) -> None:
        """Continue the chain after a restart: our journal, minus what was accepted."""
        journal = self._read_journal()
        self.pending = [e for e in journal if e["body"]["seq"] > accepted.seq]
        last = journal[-1]["body"] if journal else None
        if last is not None and last["seq"] >= accepted.seq:
            head = ChainHead(last["seq"], receipt_hash(last), last["period_end"])
        else:
            # The journal is behind the coordinator (lost disk): continue its chain.
            head = ChainHead(accepted.seq, accepted.hash, time.time())
        self.builder.head = head

    def _read_journal(self) -> list[dict[str, Any]]:
        try:
            lines = self.journal.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    async def _heartbeat(self, kind: str = "heartbeat") -> None:
        body = {"kind": kind, "node": self.key.node_id, "ts": self._ts()}
        url = f"{self.coordinator}/api/nodes/{self.key.node_id}/{kind}"
        r = await self.client.post(url, json=self._signed(body), timeout=5)
        if r.status_code == 404:
            self.registered.clear()  # the coordinator forgot us (new database): join again
        elif r.status_code != 200:
            reason = error_reason(r.content)
            log.warning("edge %s: %s refused: %s", self.edge.self_url, kind, reason)

    async def sync_ring(self) -> None:
        """Feed the live registered nodes into the peer ring; drop those that left."""
        r = await self.client.get(f"{self.coordinator}/api/nodes", timeout=5)
        r.raise_for_status()
        live = {
            n["url"].rstrip("/")
            for n in r.json()["nodes"]
            if n["live"] and n["url"].rstrip("/") != self.edge.self_url
        }
        for url in live:
            self.edge.ring.heard(url)
        for url in self._ring_urls - live:
            self.edge.ring.left(url, "not live in the network")
        self._ring_urls = live

    async def _membership(self) -> None:
        every = self.config.heartbeat
        while True:
            try:
                if not self.registered.is_set():
                    await self.register()
                else:
                    await self._heartbeat()
                await self.sync_ring()
            except (httpx.HTTPError, JoinError, KeyError, ValueError) as exc:
                log.warning("edge %s: coordinator: %s", self.edge.self_url, exc)
            await asyncio.sleep(every)

    # ---- receipts ---------------------------------------------------------------------

    def usage(self) -> Usage:
        """What this node claims: the edge's own counters."""
        return self.edge.meter.usage

    async def storage(self) -> Commitment | None:
        """What this node claims to store: a commitment to the chunks it holds."""
        return await self.prover.commit() if self.prover is not None else None

    def cut_receipt(self, storage: Commitment | None = None) -> dict[str, Any]:
        """Sign the usage since the last receipt and journal it (also when nothing was
        served: the chain's periods stay contiguous)."""
        envelope = self.builder.build(
            self.usage(),
            time.time(),
            self._started,
            storage,
            inference_seconds=self.inference.take_seconds(),
        )
        with self.journal.open("a") as f:
            f.write(json.dumps(envelope, separators=(",", ":")) + "\n")
        self.pending.append(envelope)
        if len(self.pending) > MAX_PENDING:
            log.error("edge %s: %d receipts unsent", self.edge.self_url, len(self.pending))
        return envelope

    async def send_pending(self) -> int:
        """POST pending receipts in order; returns how many were accepted."""
        accepted = 0
        async with self._send_lock:
            while self.pending:
                envelope = self.pending[0]
                r = await self.client.post(
                    f"{self.coordinator}/api/receipts", json=envelope, timeout=10
                )
                if r.status_code == 201:
                    self.pending.pop(0)
                    accepted += 1
                    continue
                if r.status_code == 409 and await self._resync():
                    continue
                log.error(
                    "edge %s: receipt #%d refused (%d): %s; dropped",
                    self.edge.self_url, envelope["body"]["seq"], r.status_code,
                    error_reason(r.content),
                )  # fmt: skip
                self.pending.pop(0)
                if r.status_code == 409:
                    await self._resync(reanchor=True)
        return accepted

    async def _resync(self, reanchor: bool = False) -> bool:
        """After a 409, line our pending receipts up with the coordinator's chain head.

        Our POST may have gone through with its answer lost (skip what it has), or the
        coordinator may have lost its last commits (resend them from our journal). With
        ``reanchor`` (our history and its history differ) new receipts continue its chain;
        the bytes of the receipts it never took are lost, and logged."""
        status = await self.client.get(
            f"{self.coordinator}/api/nodes/{self.key.node_id}", timeout=5
        )
        head = ChainHead(status.json()["last_seq"], status.json()["last_hash"])
        journal = [e for e in self._read_journal() if e["body"]["seq"] > head.seq]
        links = journal[0]["body"]["prev"] == head.hash if journal else True
        if not reanchor and links and journal != self.pending:
            self.pending = journal
            return True
        if reanchor:
            log.error(
                "edge %s: receipts fork from the coordinator's chain at #%d; continuing its chain",
                self.edge.self_url, head.seq + 1,
            )  # fmt: skip
            self.pending = []
            self.builder.head = ChainHead(head.seq, head.hash, self.builder.head.period_end)
        return False

    async def _receipts(self) -> None:
        await self.registered.wait()
        while True:
            await asyncio.sleep(self.config.receipt_interval)
            self.cut_receipt(await self.storage())
            try:
                await self.send_pending()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("edge %s: receipts not sent yet: %s", self.edge.self_url, exc)

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self.node_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self.register()
            await self.sync_ring()
        except (httpx.HTTPError, JoinError) as exc:
            # Keep serving; the membership loop retries the join.
            log.warning("edge %s: cannot join yet: %s", self.edge.self_url, exc)
        self._tasks = [
            asyncio.create_task(self._membership(), name="node membership"),
            asyncio.create_task(self._receipts(), name="node receipts"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not self.registered.is_set():
            return
        # A last receipt for the bytes since the previous one, then leave the ring at once.
        self.cut_receipt(await self.storage())
        with contextlib.suppress(httpx.HTTPError, ValueError):
            await self.send_pending()
            await self._heartbeat("leave")
