"""The coordinator's verification and rewards ledger with an injected clock: real keys,
real SQLite, no HTTP (tests/e2e/test_network.py drives the same code over HTTP)."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcast.config import NetworkConfig
from meshcast.receipts import ReceiptBuilder, Usage
from meshcast.rewards import (
    ExportInvalid,
    RewardParams,
    pool_size,
    verify_export,
    weight_of,
)
from meshcast.signing import NodeKey
from origin.coordinator import Coordinator, Rejected

EPOCH = 100.0
T0 = 1_000_000.0  # start of epoch 10000


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Node:
    def __init__(self, c: Coordinator, clock: Clock, port: int, bandwidth: int = 1000) -> None:
        self.key = NodeKey.generate()
        self.url = f"http://127.0.0.1:{port}"
        self.c, self.clock = c, clock
        self.builder = ReceiptBuilder(self.key)
        self.usage = Usage()
        self.ts = clock.t
        body = {
            "kind": "register",
            "node": self.key.node_id,
            "pubkey": self.key.public_key,
            "url": self.url,
            "capacity": {"bandwidth": bandwidth},
            "ts": self.tick(),
        }
        self.registration = {"body": body, "sig": self.key.sign_object(body)}
        c.register(self.registration)

    def tick(self) -> float:
        self.ts = max(self.ts + 0.001, self.clock.t)
        return self.ts

    def serve(self, stream: str, n: int, beacon: int | None = None) -> None:
        self.usage.served[stream] = self.usage.served.get(stream, 0) + n
        if beacon is not None:
            self.c.accept_beacon(
                {
                    "edge": self.url,
                    "stream": stream,
                    "bytes": beacon,
                    "period": [self.clock.t - 1, self.clock.t],
                    "viewer": "v1",
                },
                "127.0.0.1",
            )

    def receipt(self) -> dict[str, Any]:
        envelope = self.builder.build(self.usage, self.clock.t, period_start=T0)
        return envelope


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 1)


@pytest.fixture
def coordinator(tmp_path: Path, clock: Clock) -> Iterator[Coordinator]:
    config = NetworkConfig(
        rewards=RewardParams(epoch_seconds=EPOCH, base_pool=1_000_000, target_utilization=0.5),
        close_grace=10,
    )
    c = Coordinator(tmp_path, config, clock=clock)
    yield c
    c.db.close()


def test_honest_and_inflating_nodes_rewards_and_signed_export(
    coordinator: Coordinator, clock: Clock
) -> None:
    honest, cheat = Node(coordinator, clock, 9001), Node(coordinator, clock, 9002)
    for node in (honest, cheat):
        coordinator.record_fetch(node.url, "/live/a/360p/1.m4s", 5000)
    clock.t += 10
    honest.serve("live/a", 40_000, beacon=40_000)
    cheat.serve("live/a", 30_000, beacon=10_000)  # claims 3x what its viewers saw
    for node in (honest, cheat):
        assert coordinator.accept_receipt(node.receipt())["epoch"] == 10000
    clock.t = T0 + EPOCH + 10  # epoch over + grace
    assert coordinator.close_due() == [10000]
    export = coordinator.export(10000)
    assert export is not None
    lines = {ln["node"]: ln for ln in export["body"]["lines"]}
    assert lines[honest.key.node_id]["verified"] == 40_000
    assert lines[honest.key.node_id]["flags"] == []
    assert lines[cheat.key.node_id]["verified"] == 10_000
    assert lines[cheat.key.node_id]["flags"] == ["inflated"]
    rewards = {r["node"]: r["reward"] for r in export["body"]["rewards"]}
    # penalty 1: weight = 10000 - (30000 - 10000) < 0 -> 0: inflating earned nothing
    assert rewards[cheat.key.node_id] == 0
    demand, supply = 50_000, 2 * 1000 * int(EPOCH)
    assert export["body"]["pool"] == pool_size(coordinator.params, demand, supply) == 500_000
    assert rewards[honest.key.node_id] == 500_000
    summary = verify_export(
        export,
        coordinator.key.public_key,
        {honest.key.node_id: honest.key.public_key, cheat.key.node_id: cheat.key.public_key},
    )
    assert summary.rewards == {honest.key.node_id: 500_000, cheat.key.node_id: 0}


def _tampered(export: dict[str, Any], how: str, key: NodeKey | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(export)
    body = doc["body"]
    if how == "reward":
        body["rewards"][0]["reward"] += 1
    elif how == "receipt":
        body["receipts"][0]["body"]["served"]["live/a"] += 1
    elif how == "resigned-receipt":
        assert key is not None  # a coordinator re-signs the export but not the node receipt
        body["receipts"][0]["body"]["served"]["live/a"] += 1
        doc["sig"] = key.sign_object(body)
    elif how == "resigned-line":
        assert key is not None
        body["lines"][0]["verified"] += 1
        doc["sig"] = key.sign_object(body)
    return doc


def test_tampered_exports_fail_verification(coordinator: Coordinator, clock: Clock) -> None:
    node = Node(coordinator, clock, 9001)
    coordinator.record_fetch(node.url, "/live/a/360p/1.m4s", 5000)
    node.serve("live/a", 1000, beacon=1000)
    coordinator.accept_receipt(node.receipt())
    clock.t = T0 + EPOCH + 10
    coordinator.close_due()
    export = coordinator.export(10000)
    assert export is not None
    verify_export(export, coordinator.key.public_key)
    with pytest.raises(ExportInvalid, match="coordinator signature"):
        verify_export(_tampered(export, "reward"))
    with pytest.raises(ExportInvalid, match="coordinator signature"):
        verify_export(_tampered(export, "receipt"))
    # A dishonest coordinator can re-sign the export, but not the node's receipt...
    with pytest.raises(ExportInvalid, match="signature does not verify"):
        verify_export(_tampered(export, "resigned-receipt", coordinator.key))
    # ...nor make its numbers disagree with the formula.
    with pytest.raises(ExportInvalid, match="verified"):
        verify_export(_tampered(export, "resigned-line", coordinator.key))
    # A whole export signed by another key fails when the coordinator's key is pinned.
    other = NodeKey.generate()
    forged = copy.deepcopy(export)
    forged["body"]["coordinator"] = other.public_key
    forged["sig"] = other.sign_object(forged["body"])
    verify_export(forged)  # self-consistent...
    with pytest.raises(ExportInvalid, match="another coordinator"):
        verify_export(forged, coordinator.key.public_key)  # ...but not ours


def test_close_is_idempotent_append_only_and_counts_each_receipt_once(
    coordinator: Coordinator, clock: Clock
) -> None:
    node = Node(coordinator, clock, 9001)
    coordinator.record_fetch(node.url, "/live/a/360p/1.m4s", 5000)
    total = 0
    for _ in range(5):  # receipts every 30 s across two epochs
        clock.t += 30
        node.serve("live/a", 1000, beacon=1000)
        coordinator.accept_receipt(node.receipt())
        total += 1000
    clock.t = T0 + 2 * EPOCH + 10
    assert coordinator.close_due() == [10000, 10001]
    assert coordinator.close_due() == []
    first = coordinator.export(10000)
    assert coordinator.close_epoch(10000) == first  # closing again changes nothing
    counted = sum(
        ln["claimed"]
        for e in (10000, 10001)
        for ln in (coordinator.export(e) or {})["body"]["lines"]
    )
    assert counted == total
    (rows,) = coordinator.db.execute("SELECT COUNT(*) FROM lines").fetchone()
    assert rows == 2
    for statement in (
        "UPDATE rewards SET reward = reward + 1",
        "DELETE FROM lines",
        "UPDATE receipts SET served = 0",
        "DELETE FROM epochs",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            coordinator.db.execute(statement)
    # A receipt whose epoch already closed stays in the chain but never counts.
    node.serve("live/a", 777, beacon=777)
    envelope = node.builder.build(node.usage, T0 + 2 * EPOCH - 1)
    result = coordinator.accept_receipt(envelope)
    assert result["late"] and result["epoch"] == 10001
    assert coordinator.close_epoch(10001) == coordinator.export(10001)
    assert sum(ln["claimed"] for ln in coordinator.export(10001)["body"]["lines"]) == 2000  # type: ignore[index]


def test_never_fetched_streams_and_unbacked_storage_claims_earn_nothing(
    coordinator: Coordinator, clock: Clock
) -> None:
    node = Node(coordinator, clock, 9001)
    node.serve("live/ghost", 5000, beacon=5000)  # beacons, but the node never fetched it
    envelope = node.receipt()
    coordinator.accept_receipt(envelope)
    # A storage claim with no inventory commitment behind it and never challenged (the
    # node signs one by hand: the builder only claims what a commitment covers).
    body = dict(node.builder.build(node.usage, clock.t + 1)["body"], stored_byte_seconds=99)
    signed = {"body": body, "sig": node.key.sign_object(body)}
    coordinator.accept_receipt(signed)
    clock.t = T0 + EPOCH + 10
    coordinator.close_due()
    export = coordinator.export(10000)
    assert export is not None
    lines = {ln["kind"]: ln for ln in export["body"]["lines"]}
    assert lines["bandwidth"]["verified"] == 0 and lines["bandwidth"]["flags"] == ["never_fetched"]
    storage = lines["storage"]
    assert storage["verifier"] is True and storage["verified"] == 0
    assert storage["flags"] == ["unchallenged", "inflated"] and storage["evidence"] == 0
    assert export["body"]["rewards"][0]["reward"] == 0
    verify_export(export, coordinator.key.public_key)


def test_forged_replayed_and_unknown_messages_are_rejected_and_recorded(
    coordinator: Coordinator, clock: Clock
) -> None:
    node = Node(coordinator, clock, 9001)
    with pytest.raises(Rejected, match="replay") as exc:
        coordinator.register(node.registration)  # a captured registration, replayed
    assert exc.value.code == 409
    stranger = NodeKey.generate()
    bad = dict(node.registration["body"], node=stranger.node_id)
    with pytest.raises(Rejected, match="hash of the public key"):
        coordinator.register({"body": bad, "sig": node.key.sign_object(bad)})
    old = dict(node.registration["body"], ts=clock.t - 3600)
    with pytest.raises(Rejected, match="within"):
        coordinator.register({"body": old, "sig": node.key.sign_object(old)})
    node.serve("live/a", 100)
    envelope = node.receipt()
    forged = copy.deepcopy(envelope)
    forged["body"]["served"]["live/a"] = 10**9
    with pytest.raises(Rejected, match="bad signature") as exc:
        coordinator.accept_receipt(forged)
    assert exc.value.code == 401
    coordinator.accept_receipt(envelope)
    with pytest.raises(Rejected, match="replay") as exc:
        coordinator.accept_receipt(envelope)
    assert exc.value.code == 409
    impostor = ReceiptBuilder(stranger).build(node.usage, clock.t)
    with pytest.raises(Rejected, match="unknown node") as exc:
        coordinator.accept_receipt(impostor)
    status = coordinator.node_status(node.key.node_id)
    assert status is not None and status["rejected"] == 2 and status["last_seq"] == 1
    assert {r["code"] for r in status["rejections"]} == {401, 409}
    hb = {"kind": "heartbeat", "node": node.key.node_id, "ts": node.tick()}
    signed = {"body": hb, "sig": node.key.sign_object(hb)}
    coordinator.heartbeat(node.key.node_id, signed)
    with pytest.raises(Rejected, match="replay"):
        coordinator.heartbeat(node.key.node_id, signed)


def test_pool_adapts_to_demand_and_supply() -> None:
    p = RewardParams(base_pool=1000, target_utilization=0.5, min_pool_fraction=0.1)
    assert pool_size(p, demand=0, supply=10_000) == 100  # idle network: the floor
    assert pool_size(p, demand=2500, supply=10_000) == 500  # half the target
    assert pool_size(p, demand=5000, supply=10_000) == 1000  # at target
    assert pool_size(p, demand=5000, supply=20_000) == 500  # twice the nodes, same demand
    assert weight_of(100, 100, 1.0) == 100
    assert weight_of(200, 100, 1.0) == 0
    assert weight_of(150, 100, 1.0) == 50


def test_beacons_are_validated_rate_limited_and_closed_epochs_ignore_them(
    coordinator: Coordinator, clock: Clock
) -> None:
    node = Node(coordinator, clock, 9001)

    def beacon(**patch: Any) -> dict[str, Any]:
        body = {"edge": node.url, "stream": "live/a", "bytes": 10,
                "period": [clock.t - 1, clock.t], "viewer": "v"}  # fmt: skip
        return coordinator.accept_beacon(dict(body, **patch), "10.0.0.1")

    assert beacon()["counted"] is True
    for patch, reason in (
        ({"bytes": -1}, "bytes"),
        ({"bytes": 1.5}, "bytes"),
        ({"stream": "a"}, "stream"),
        ({"period": [clock.t, clock.t - 5]}, "period"),
        ({"period": [clock.t - 3 * EPOCH, clock.t - 2 * EPOCH]}, "too old"),
        ({"viewer": "x" * 65}, "viewer"),
    ):
        with pytest.raises(Rejected, match=reason) as exc:
            beacon(**patch)
        assert exc.value.code == 400
    with pytest.raises(Rejected, match="no registered node") as exc:
        beacon(edge="http://127.0.0.1:1")
    assert exc.value.code == 404
    # one address gets a burst, then a steady rate: a flood is refused, not stored
    refused = 0
    for _ in range(200):
        try:
            beacon()
        except Rejected as e:
            assert e.code == 429
            refused += 1
    assert refused >= 50
    (stored,) = coordinator.db.execute("SELECT COUNT(*) FROM beacons").fetchone()
    assert stored <= 200 - refused + 1
    assert coordinator.accept_beacon(
        {"edge": node.url, "stream": "live/a", "bytes": 1, "period": [clock.t - 1, clock.t]},
        "10.0.0.2",
    )["counted"]
    coordinator.accept_receipt(node.receipt())
    clock.t = T0 + EPOCH + 10
    coordinator.close_due()
    late = coordinator.accept_beacon(
        {"edge": node.url, "stream": "live/a", "bytes": 1, "period": [T0 + 50, T0 + 60]},
        "10.0.0.3",
    )
    assert late == {"counted": False, "reason": "epoch 10000 is closed"}


def test_one_address_cannot_report_more_than_its_byte_budget(tmp_path: Path) -> None:
    clock = Clock(T0 + 1)
    config = NetworkConfig(
        rewards=RewardParams(epoch_seconds=EPOCH), beacon_address_rate=1000.0, beacon_burst=1e6
    )
    coordinator = Coordinator(tmp_path, config, clock=clock)
    node = Node(coordinator, clock, 9001)
    budget = int(1000 * EPOCH)

    def beacon(size: int, client: str = "10.0.0.9") -> dict[str, Any]:
        body = {"edge": node.url, "stream": "live/a", "bytes": size,
                "period": [clock.t - 1, clock.t], "viewer": "v"}  # fmt: skip
        return coordinator.accept_beacon(body, client)

    assert beacon(budget - 10)["counted"]
    assert beacon(10)["counted"]
    with pytest.raises(Rejected, match="budget") as exc:
        beacon(1)
    assert exc.value.code == 429
    assert beacon(5, client="10.0.0.10")["counted"]  # another address has its own budget
    coordinator.db.close()
