"""Storage proofs end to end: three edges with the storage plugin join a network, boto3
stores objects on them, each edge's receipts commit to the chunks it holds, and the
coordinator's random chunk challenges catch the edge that silently dropped its chunks."""

from __future__ import annotations

import asyncio
import copy
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import httpx
import pytest

from edge.plugins.storage.plugin import StoragePlugin
from edge.service import EdgeService
from meshcast.config import EdgeConfig, NetworkConfig, OriginConfig, StorageConfig
from meshcast.keys import S3_KIND, KeyStore
from meshcast.receipts import parse_receipt
from meshcast.rewards import ExportInvalid, RewardParams, verify_export
from meshcast.signing import NodeKey
from origin.coordinator import Coordinator
from origin.service import OriginService
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

DAY = 86400.0
KiB = 1024


@dataclass
class StorageNet:
    origin: OriginService
    coordinator: Coordinator
    edges: list[EdgeService]
    keys: list[NodeKey]
    credentials: tuple[str, str]

    def s3(self, i: int = 0) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"{self.edges[i].url}/s3",
            aws_access_key_id=self.credentials[0],
            aws_secret_access_key=self.credentials[1],
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}
            ),
        )

    def store(self, i: int) -> StoragePlugin:
        plugin = self.edges[i].edge.plugins[0]
        assert isinstance(plugin, StoragePlugin)
        return plugin


@pytest.fixture
async def snet(tmp_path: Path) -> AsyncIterator[StorageNet]:
    origin = OriginService(
        OriginConfig(
            data_dir=tmp_path / "origin",
            http_port=free_port(),
            rtmp_port=0,
            network=NetworkConfig(
                rewards=RewardParams(epoch_seconds=DAY),
                close_grace=5,
                # rounds are run by the test, not the timer
                challenge_interval=3600,
                challenges_per_round=6,
            ),
        )
    )
    await origin.start()
    assert origin.coordinator is not None
    data = tmp_path / "data"
    access_key, secret = KeyStore(data).create("tester", S3_KIND).split(" ")
    edges, keys = [], []
    for i in range(3):
        port = free_port()
        node_dir = tmp_path / f"node-{i}"
        keys.append(NodeKey.create(node_dir / "node.key"))
        edges.append(
            EdgeService(
                EdgeConfig(
                    origin=origin.url,
                    port=port,
                    cache_dir=tmp_path / f"edge-{port}",
                    join=origin.url,
                    node_dir=node_dir,
                    data_dir=data,
                    plugins=("storage",),
                    storage=StorageConfig(chunk_size=64 * KiB, repair_interval=3600),
                    receipt_interval=0.5,
                    heartbeat=0.5,
                )
            )
        )
    for edge in edges:
        await edge.start()
    try:
        yield StorageNet(origin, origin.coordinator, edges, keys, (access_key, secret))
    finally:
        for edge in edges:
            if edge.http.server.started and not edge.http.server.should_exit:
                await edge.close()
        await origin.close()


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_dropped_chunks_fail_challenges_and_honest_storage_verifies(
    snet: StorageNet,
) -> None:
    c = snet.coordinator

    async def ring_complete() -> bool:
        return all(len(e.edge.ring.alive_peers()) == 2 for e in snet.edges)

    await wait_for(ring_complete, 20, "the registered nodes to form the ring")
    objects = {f"obj-{i}": os.urandom(200 * KiB + i) for i in range(6)}
    s3 = snet.s3(0)
    await asyncio.to_thread(s3.create_bucket, Bucket="proofs")
    for key, body in objects.items():
        await asyncio.to_thread(s3.put_object, Bucket="proofs", Key=key, Body=body)
    held = [dict(snet.store(i).store.chunks) for i in range(3)]
    assert all(held), held  # k=2 over 3 nodes: everyone holds a share
    assert sum(len(h) for h in held) == 2 * len(set().union(*held))

    async def committed() -> bool:
        for i, key in enumerate(snet.keys):
            body = await asyncio.to_thread(c.last_receipt_body, key.node_id)
            if body is None or "storage" not in body:
                return False
            if body["storage"]["bytes"] != sum(held[i].values()):
                return False
        return True

    await wait_for(committed, 20, "receipts committing to every node's chunks")

    # Node 2 loses every chunk file behind its back (disk wiped, or a cheater deleting
    # what it is paid to keep); it still claims them until a read finds them gone.
    cheat = snet.store(2).store
    for digest in held[2]:
        cheat.chunk_path(digest).unlink()
    results = await c.challenger.round()
    by_node: dict[str, list[Any]] = {}
    for res in results:
        by_node.setdefault(res.node, []).append(res)
    honest = [k.node_id for k in snet.keys[:2]]
    cheater = snet.keys[2].node_id
    for node in honest:
        assert len(by_node[node]) == 6 and all(r.ok for r in by_node[node]), by_node[node]
    assert len(by_node[cheater]) == 6
    assert not any(r.ok for r in by_node[cheater])
    assert all("410" in r.reason and "no longer held" in r.reason for r in by_node[cheater])
    # A second round: honest nodes keep passing.
    await c.challenger.round()

    # Nothing is lost: every object reads back whole through the edge that lost its copies.
    s3_cheat = snet.s3(2)
    for key, body in objects.items():
        got = await asyncio.to_thread(
            lambda k=key: s3_cheat.get_object(Bucket="proofs", Key=k)["Body"].read()
        )
        assert got == body

    # Challenges only the coordinator signed are answered.
    async with httpx.AsyncClient(timeout=10) as client:
        impostor = NodeKey.generate()
        root = parse_receipt(c.last_receipt_body(honest[0])).storage.root  # type: ignore[union-attr]
        body = {"kind": "challenge", "node": honest[0], "root": root, "offset": 0,
                "ts": time.time()}  # fmt: skip
        url = f"{snet.edges[0].url}/_storage/challenge"
        forged = await client.post(url, json={"body": body, "sig": impostor.sign_object(body)})
        assert forged.status_code == 401
        unknown = dict(body, root="ab" * 32)
        r = await client.post(url, json={"body": unknown, "sig": c.key.sign_object(unknown)})
        assert r.status_code == 404
        other = dict(body, node=cheater)
        r = await client.post(url, json={"body": other, "sig": c.key.sign_object(other)})
        assert r.status_code == 400  # a challenge for another node
        stale = dict(body, ts=time.time() - 3600)
        r = await client.post(url, json={"body": stale, "sig": c.key.sign_object(stale)})
        assert r.status_code == 400

    for edge in snet.edges:
        await edge.close()  # last receipts
    real = time.time()
    c.clock = lambda: real + 2 * DAY
    closed = await asyncio.to_thread(c.close_due)
    assert closed
    export = c.export(closed[0])
    assert export is not None
    lines = {ln["node"]: ln for ln in export["body"]["lines"] if ln["kind"] == "storage"}
    for node in honest:
        line = lines[node]
        assert line["claimed"] > 0 and line["verified"] == line["claimed"], line
        assert line["passed"] == line["checks"] == 12 and line["flags"] == []
        # claimed byte-seconds are what the node held times how long (its receipts)
        assert line["claimed"] <= line["evidence"] * 1.05
    bad = lines[cheater]
    assert bad["passed"] == 0 and bad["checks"] >= 6
    assert bad["verified"] == 0 and "failed_challenges" in bad["flags"]
    rewards = {r["node"]: r for r in c.rewards()}
    assert rewards[cheater]["reward"] == 0
    assert all(rewards[n]["reward"] > 0 for n in honest)
    assert rewards[honest[0]]["kinds"]["storage"]["flags"] == []

    summary = verify_export(export, c.key.public_key)
    assert {n: v for n, v in summary.rewards.items() if v} == {
        n: rewards[n]["reward"] for n in honest
    }
    # A storage line's verified amount is re-checked from the line alone: raising it
    # (even re-signed by the coordinator) does not verify.
    forged_export = copy.deepcopy(export)
    for line in forged_export["body"]["lines"]:
        if line["node"] == cheater and line["kind"] == "storage":
            line["verified"] = line["claimed"]
    forged_export["sig"] = c.key.sign_object(forged_export["body"])
    with pytest.raises(ExportInvalid, match="storage"):
        verify_export(forged_export, c.key.public_key)
