"""Contributor network end to end: an origin (the coordinator) and three edges that join it
with ``--join``, an ffmpeg RTMP push, and player-like httpx viewers that send beacons."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edge.network import NodeAgent
from edge.service import EdgeService
from meshcast.config import EdgeConfig, NetworkConfig, OriginConfig
from meshcast.receipts import Usage
from meshcast.rewards import RewardParams
from meshcast.signing import NodeKey
from origin.coordinator import Coordinator
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url
from tests.e2e.test_edge import metric
from tests.e2e.test_ladder import wait_for_url
from tests.e2e.test_rtmp_ingest import ffmpeg_push

pytestmark = pytest.mark.e2e

DAY = 86400.0


class InflatingAgent(NodeAgent):
    """A modified node: claims 1.5x what it served, signed with its own (valid) key."""

    def usage(self) -> Usage:
        real = super().usage().copy()
        real.served = {s: n * 3 // 2 for s, n in real.served.items()}
        return real


@dataclass
class Net:
    origin: OriginService
    coordinator: Coordinator
    edges: list[EdgeService]
    keys: list[NodeKey]


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    origin = OriginService(
        OriginConfig(
            data_dir=tmp_path / "origin",
            http_port=free_port(),
            rtmp_port=0,
            # One long epoch holds the whole test; the clock is moved to close it.
            network=NetworkConfig(rewards=RewardParams(epoch_seconds=DAY), close_grace=5),
        )
    )
    await origin.start()
    assert origin.coordinator is not None
    edges, keys = [], []
    for i in range(3):
        port = free_port()
        node_dir = tmp_path / f"node-{i}"
        keys.append(NodeKey.create(node_dir / "node.key"))
        with pytest.MonkeyPatch.context() as patch:
            if i == 2:  # built with the edge: its routes are mounted with the app
                patch.setattr("edge.service.NodeAgent", InflatingAgent)
            service = EdgeService(
                EdgeConfig(
                    origin=origin.url,
                    port=port,
                    cache_dir=tmp_path / f"edge-{port}",
                    join=origin.url,  # no --peer, no bus: the ring comes from the registry
                    node_dir=node_dir,
                    receipt_interval=1.0,
                    heartbeat=0.5,
                )
            )
        assert isinstance(service.agent, InflatingAgent) == (i == 2)
        edges.append(service)
    for edge in edges:
        await edge.start()
    try:
        yield Net(origin, origin.coordinator, edges, keys)
    finally:
        for edge in edges:
            if edge.http.server.started and not edge.http.server.should_exit:
                await edge.close()
        await origin.close()


async def viewer(
    client: httpx.AsyncClient, coordinator: str, edge: str, name: str, viewer_id: str
) -> int:
    """Plays the 360p rendition like hls.js (playlist polls, each new segment once) and
    beacons the bytes it got from the edge every 2 s and at the end."""
    seen: set[int] = set()
    got = reported = 0
    last_beacon = time.time()

    async def beacon() -> None:
        nonlocal reported, last_beacon
        now = time.time()
        body = {
            "edge": edge,
            "stream": f"live/{name}",
            "bytes": got - reported,
            "period": [last_beacon, now],
            "viewer": viewer_id,
        }
        r = await client.post(f"{coordinator}/api/beacons", json=body)
        assert r.status_code == 202, r.text
        reported, last_beacon = got, now

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        playlist = await client.get(f"{edge}/live/{name}/360p/index.m3u8")
        if playlist.status_code == 200:
            got += len(playlist.content)
            numbers = [int(n) for n in re.findall(r"^(\d+)\.m4s$", playlist.text, re.M)]
            if not seen and numbers:
                seen.update(numbers[:-2])
            for number in numbers:
                if number not in seen:
                    seen.add(number)
                    seg = await client.get(f"{edge}/live/{name}/360p/{number}.m4s")
                    assert seg.status_code == 200
                    got += len(seg.content)
            if "#EXT-X-ENDLIST" in playlist.text:
                break
        if time.time() - last_beacon > 2:
            await beacon()
        await asyncio.sleep(0.3)
    await beacon()
    return got


async def ring_of(client: httpx.AsyncClient, edge: EdgeService) -> set[str]:
    return set((await client.get(f"{edge.url}/healthz")).json()["peers_alive"])


async def cli(*args: str) -> tuple[int, str, str]:
    """The ``meshcast`` CLI in a child process (our loop keeps serving the origin)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshcast.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_three_node_ring_receipts_match_metrics_and_inflation_is_caught(
    net: Net, ffmpeg_cli: str, tmp_path: Path
) -> None:
    c = net.coordinator
    urls = {e.url for e in net.edges}
    async with httpx.AsyncClient(timeout=10) as client:
        # The ring is made of the registered live nodes (no --peer, no bus).
        for _ in range(50):
            rings = [await ring_of(client, e) for e in net.edges]
            if all(r == urls - {e.url} for r, e in zip(rings, net.edges, strict=True)):
                break
            await asyncio.sleep(0.1)
        assert rings == [urls - {e.url} for e in net.edges]
        nodes = (await client.get(f"{net.origin.url}/api/nodes")).json()["nodes"]
        assert {n["node"] for n in nodes if n["live"]} == {k.node_id for k in net.keys}
        assert all(n["capacity"]["cpus"] >= 1 and "disk_free" in n["capacity"] for n in nodes)

        key = net.origin.keys.create("net")
        proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(net.origin, key), 12.0)
        await wait_for_url(f"{net.origin.url}/live/net/360p/index.m3u8", 30)
        got = await asyncio.gather(
            *(
                viewer(client, net.origin.url, edge.url, "net", f"v{i}-{j}")
                for i, edge in enumerate(net.edges)
                for j in range(2)
            )
        )
        await asyncio.wait_for(proc.communicate(), 60)
        assert all(g > 50_000 for g in got), got
        texts = [(await client.get(f"{e.url}/metrics")).text for e in net.edges]
        peer_labels = sum(
            metric(t, "meshcast_edge_requests_total", '{cache="PEER"}') for t in texts
        )
        assert peer_labels > 0  # the edges really filled from each other
        for edge in net.edges:
            await edge.close()  # last receipt, then leave
        left = (await client.get(f"{net.origin.url}/api/nodes")).json()["nodes"]
        assert not any(n["live"] for n in left)

        viewer_bytes = [
            metric(t, "meshcast_edge_stream_bytes_total", '{stream="live/net",to="viewer"}')
            for t in texts
        ]
        for text, vb in zip(texts, viewer_bytes, strict=True):
            peer = metric(
                t := text, "meshcast_edge_stream_bytes_total", '{stream="live/net",to="peer"}'
            )
            # receipts count at the same points as the edge's byte counter
            assert vb + peer == metric(t, "meshcast_edge_served_bytes_total")
        # what each edge's viewers got is what the edge says it served them
        assert viewer_bytes == [got[0] + got[1], got[2] + got[3], got[4] + got[5]]

        real = time.time()
        c.clock = lambda: real + 2 * DAY  # end the epoch (injected clock, no sleeping)
        closed = await asyncio.to_thread(c.close_due)
        assert closed
        rewards = {
            k.node_id: (
                await client.get(f"{net.origin.url}/api/rewards", params={"node": k.node_id})
            ).json()
            for k in net.keys
        }
    verified = {
        n: sum(e["kinds"]["bandwidth"]["verified"] for e in r["epochs"]) for n, r in rewards.items()
    }
    claimed = {
        n: sum(e["kinds"]["bandwidth"]["claimed"] for e in r["epochs"]) for n, r in rewards.items()
    }
    flags = {
        n: {f for e in r["epochs"] for f in e["kinds"]["bandwidth"]["flags"]}
        for n, r in rewards.items()
    }
    honest = [k.node_id for k in net.keys[:2]]
    cheat = net.keys[2].node_id
    for node, served in zip(honest, viewer_bytes[:2], strict=True):
        assert abs(verified[node] - served) <= 0.01 * served, (verified, viewer_bytes)
        assert claimed[node] == served  # every byte reached the ledger, none twice
        assert flags[node] == set()
        assert rewards[node]["total_reward"] > 0
    assert claimed[cheat] >= 1.45 * viewer_bytes[2]
    assert abs(verified[cheat] - viewer_bytes[2]) <= 0.01 * viewer_bytes[2]
    assert flags[cheat] == {"inflated"}
    # penalty 1 x the excess: claiming 1.5x earns half of what serving the same bytes
    # honestly earns, however the pool is split
    per_byte = rewards[honest[0]]["total_reward"] / verified[honest[0]]
    assert rewards[cheat]["total_reward"] <= 0.55 * per_byte * viewer_bytes[2]

    # Closing again never double-counts.
    again = [c.close_epoch(e) for e in closed]
    assert again == [c.export(e) for e in closed]

    # The export verifies with the public keys only, via the CLI; a tampered one does not.
    pubkeys = tmp_path / "pubkeys.json"
    pubkeys.write_text(json.dumps({k.node_id: k.public_key for k in net.keys}))
    async with httpx.AsyncClient(timeout=10) as client:
        doc = (await client.get(f"{net.origin.url}/api/epochs/{closed[0]}/export")).json()
        info = (await client.get(f"{net.origin.url}/api/coordinator")).json()
    export_file = tmp_path / "epoch.json"
    export_file.write_text(json.dumps(doc))
    rc, out, err = await cli("rewards", "verify", str(export_file), "--pubkeys", str(pubkeys),
             "--coordinator-key", info["pubkey"])  # fmt: skip
    assert rc == 0, err
    assert f"epoch {closed[0]} verifies: 3 nodes" in out
    bad = copy.deepcopy(doc)
    bad["body"]["rewards"][0]["reward"] += 1
    export_file.write_text(json.dumps(bad))
    rc, _, err = await cli("rewards", "verify", str(export_file), "--pubkeys", str(pubkeys))
    assert rc == 1 and "does not verify" in err

    rc, table, err = await cli("rewards", "--coordinator", net.origin.url)
    assert rc == 0, err
    for node in (*honest, cheat):
        assert node in table
    assert "inflated" in table
    # the same table straight from the coordinator's ledger file
    rc, offline, err = await cli("rewards", "--data", str(net.origin.config.data_dir))
    assert rc == 0, err
    assert offline == table


async def test_forged_and_replayed_receipts_over_http(net: Net) -> None:
    agent = net.edges[0].agent
    assert agent is not None
    journal = agent.journal
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(100):
            status = (await client.get(f"{net.origin.url}/api/nodes/{agent.key.node_id}")).json()
            if status["last_seq"] >= 2:
                break
            await asyncio.sleep(0.1)
        receipts = [json.loads(line) for line in journal.read_text().splitlines()]
        first = receipts[0]
        # bytes changed without re-signing
        forged = copy.deepcopy(receipts[-1])
        forged["body"]["served"] = {"live/x": 10**9}
        r = await client.post(f"{net.origin.url}/api/receipts", json=forged)
        assert r.status_code == 401 and "signature" in r.json()["error"]
        # an accepted receipt sent again
        r = await client.post(f"{net.origin.url}/api/receipts", json=first)
        assert r.status_code == 409 and "replay" in r.json()["error"]
        # a receipt signed by a key the coordinator never registered
        stranger = NodeKey.generate()
        body = dict(first["body"], node=stranger.node_id)
        r = await client.post(
            f"{net.origin.url}/api/receipts", json={"body": body, "sig": stranger.sign_object(body)}
        )
        assert r.status_code == 404 and "register" in r.json()["error"]
        # garbage
        r = await client.post(f"{net.origin.url}/api/receipts", content=b"{nope")
        assert r.status_code == 400
        status = (await client.get(f"{net.origin.url}/api/nodes/{agent.key.node_id}")).json()
        assert status["rejected"] == 2
        assert {x["code"] for x in status["rejections"]} == {401, 409}
        # the honest agent's chain goes on undisturbed
        before = status["last_seq"]
        for _ in range(50):
            status = (await client.get(f"{net.origin.url}/api/nodes/{agent.key.node_id}")).json()
            if status["last_seq"] > before:
                break
            await asyncio.sleep(0.1)
        assert status["last_seq"] > before
        # unknown beacons and the inference API say why they cannot be served
        r = await client.post(
            f"{net.origin.url}/api/beacons",
            json={
                "edge": "http://127.0.0.1:1",
                "stream": "live/x",
                "bytes": 1,
                "period": [time.time() - 1, time.time()],
                "viewer": "v",
            },
        )
        assert r.status_code == 404
        r = await client.post(f"{net.origin.url}/api/inference", json={})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]


async def test_a_restarted_edge_continues_its_chain(net: Net, tmp_path: Path) -> None:
    edge = net.edges[1]
    assert edge.agent is not None
    node = edge.agent.key.node_id
    await edge.close()
    async with httpx.AsyncClient(timeout=10) as client:
        status = (await client.get(f"{net.origin.url}/api/nodes/{node}")).json()
        last = status["last_seq"]
        assert last >= 1 and status["rejected"] == 0
        restarted = EdgeService(edge.config)
        await restarted.start()
        try:
            for _ in range(60):
                status = (await client.get(f"{net.origin.url}/api/nodes/{node}")).json()
                if status["last_seq"] > last:
                    break
                await asyncio.sleep(0.1)
        finally:
            await restarted.close()
    assert status["last_seq"] > last and status["rejected"] == 0


async def test_a_lost_answer_is_resynced_not_dropped(net: Net) -> None:
    agent = net.edges[0].agent
    assert agent is not None
    await agent.registered.wait()
    async with httpx.AsyncClient(timeout=10) as client:
        async with agent._send_lock:  # hold the agent's own sender off meanwhile
            envelope = agent.cut_receipt()
            # the POST reaches the coordinator but the agent never hears the answer
            r = await client.post(f"{net.origin.url}/api/receipts", json=envelope)
            assert r.status_code == 201
        agent.cut_receipt()
        await agent.send_pending()  # 409 for the first, then resync from the journal
        assert agent.pending == []
        status = (await client.get(f"{net.origin.url}/api/nodes/{agent.key.node_id}")).json()
    assert status["last_seq"] == agent.builder.head.seq
    assert status["last_hash"] == agent.builder.head.hash
    assert [x["reason"][:6] for x in status["rejections"]] == ["replay"]
