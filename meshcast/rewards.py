"""Reward formula and signed epoch exports (sans-IO; the coordinator computes with it, and
``verify_export`` lets anyone re-check an epoch with public keys only).

Formula, per epoch (all integer or exact-fraction arithmetic, so a verifier in another
language gets the same numbers):

1. Per node and contribution kind, the coordinator's ``Verifier`` for that kind turns the
   node's claims (sum of its receipts in the epoch) into ``verified`` units using
   independent evidence. Bandwidth (``origin/coordinator.py``):
   ``verified = claimed`` if ``claimed <= evidence * (1 + tolerance)``, else
   ``min(claimed, evidence)`` and the line is flagged ``inflated``; bytes of a stream the
   node never fetched (from the origin or any peer) verify to 0 (``never_fetched``).
   Storage (``origin/storage_challenges.py``): ``evidence`` = the byte-seconds the node's
   signed inventory commitments cover (recomputed here from the receipts), and
   ``verified = floor(verified_amount(claimed, evidence) * passed / checks)`` with
   ``passed``/``checks`` the coordinator's random chunk challenges in the epoch (0 if none).
   Inference (``origin/inference.py``): ``inference_verified``.
2. ``weight = max(0, verified - penalty * (claimed - verified))``: an inflated claim costs
   ``penalty`` times the excess, so inflating never pays (with penalty 1, claiming twice
   what was served earns nothing).
3. Pool: ``pool = floor(base_pool * clamp(utilization / target_utilization,
   min_pool_fraction, 1))`` with ``utilization = demand / supply``, ``demand`` the verified
   bandwidth bytes of the epoch and ``supply`` the advertised bandwidth (bytes/s) of the
   nodes that reported in the epoch times its length. A network with far more capacity
   than viewers pays less per epoch (adding idle nodes does not mint more), and each node's
   share shrinks as more nodes share the same demand; at the target utilization the full
   pool is paid.
4. The pool is split between kinds by ``kind_shares`` (only kinds that have a verifier and
   some weight), then within a kind by weight: ``reward = floor(pool_kind * weight /
   total_weight)`` in integer units (the rounding remainder is not paid out).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

from meshcast.receipts import ReceiptRejected, parse_receipt, receipt_hash
from meshcast.signing import SignatureError, node_id_for, verify_object


class ExportInvalid(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RewardParams:
    epoch_seconds: float = 3600.0
    # Reward units per epoch at full utilization (integer units; a settlement system maps
    # them to money or tokens).
    base_pool: int = 1_000_000
    target_utilization: float = 0.5
    min_pool_fraction: float = 0.1
    penalty: float = 1.0
    tolerance: float = 0.05
    # Share of viewers that send beacons; evidence = beacon bytes / rate.
    beacon_sample_rate: float = 1.0
    # Split of the pool between contribution kinds (renormalized over the kinds that have
    # verified work in the epoch, so a network without storage pays bandwidth in full).
    kind_shares: dict[str, float] = field(
        default_factory=lambda: {"bandwidth": 0.6, "storage": 0.25, "inference": 0.15}
    )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RewardParams:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def _frac(x: float | int) -> Fraction:
    return Fraction(x)


def verified_amount(claimed: int, evidence: int, tolerance: float) -> int:
    if claimed <= evidence * (1 + _frac(tolerance)):
        return claimed
    return min(claimed, evidence)


def weight_of(claimed: int, verified: int, penalty: float) -> Fraction:
    return max(Fraction(0), verified - _frac(penalty) * (claimed - verified))


def pool_size(params: RewardParams, demand: int, supply: int) -> int:
    if supply <= 0:
        factor = Fraction(1) if demand > 0 else _frac(params.min_pool_fraction)
    else:
        factor = Fraction(demand, supply) / _frac(params.target_utilization)
    factor = min(Fraction(1), max(_frac(params.min_pool_fraction), factor))
    return math.floor(params.base_pool * factor)


def split_rewards(
    params: RewardParams, pool: int, weights: Mapping[str, Mapping[str, Fraction]]
) -> dict[str, int]:
    """``weights[kind][node]`` -> reward per node (integer units)."""
    active = {
        k: w for k, w in weights.items() if params.kind_shares.get(k, 0) > 0 and any(w.values())
    }
    shares = {k: _frac(params.kind_shares[k]) for k in active}
    total_share = sum(shares.values(), Fraction(0))
    rewards: dict[str, int] = {}
    for kind, by_node in active.items():
        kind_pool = pool * shares[kind] / total_share
        total = sum(by_node.values(), Fraction(0))
        for node, w in by_node.items():
            rewards[node] = rewards.get(node, 0) + math.floor(kind_pool * w / total)
    return rewards


@dataclass(frozen=True, slots=True)
class ExportSummary:
    epoch: int
    nodes: int
    receipts: int
    pool: int
    rewards: dict[str, int]


def verify_export(
    doc: Mapping[str, Any],
    coordinator_key: str | None = None,
    node_keys: Mapping[str, str] | None = None,
) -> ExportSummary:
    """Check an epoch export with public keys only: the coordinator's signature, every
    receipt's node signature and chain links, that each line's claim is the sum of the
    node's receipts, and that verified amounts, weights, pool and rewards follow the formula.

    ``coordinator_key``/``node_keys`` pin the keys to trust; without them the keys in the
    export are used (node ids are hashes of their keys, so a swapped node key is caught
    either way; a swapped coordinator key is only caught when pinned)."""
    try:
        body, sig = doc["body"], doc["sig"]
        coordinator = coordinator_key or body["coordinator"]
        if coordinator_key and body["coordinator"] != coordinator_key:
            raise ExportInvalid("export names another coordinator key")
        verify_object(coordinator, body, sig)
    except SignatureError as exc:
        raise ExportInvalid(f"coordinator signature: {exc}") from exc
    except (KeyError, TypeError) as exc:
        raise ExportInvalid(f"malformed export: missing {exc}") from exc
    try:
        return _check_body(body, node_keys or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportInvalid(f"malformed export: {exc!r}") from exc


def bandwidth_verified(claimed: int, evidence: int, fetched: int, tolerance: float) -> int:
    """Verified bytes of one (node, stream) line: nothing for a stream the node never
    fetched, else the claim within tolerance of the evidence, else the evidence."""
    if claimed and not fetched:
        return 0
    return verified_amount(claimed, evidence, tolerance)


def storage_verified(claimed: int, committed: int, passed: int, checks: int, tol: float) -> int:
    """Verified byte-seconds of a storage line: the claim bounded by what the node's signed
    inventory commitments cover (bytes x period), times the share of the coordinator's
    random chunk challenges it passed. Never challenged in the epoch: nothing."""
    if checks <= 0:
        return 0
    return math.floor(verified_amount(claimed, committed, tol) * Fraction(passed, checks))


def inference_verified(claimed: int, evidence: int, passed: int, checks: int, tol: float) -> int:
    """Verified seconds of an inference line: the claim bounded by ``evidence``, the
    coordinator-metered seconds (dispatch to answer) of the executions the node claims that
    the coordinator really saw it complete, never paid before, and not contradicted by a
    spot check; then times the share of spot checks of those executions it passed (none
    checked: the whole)."""
    verified = verified_amount(claimed, evidence, tol)
    if checks <= 0:
        return verified
    return math.floor(verified * Fraction(passed, checks))


def line_verified(line: Mapping[str, Any], params: RewardParams) -> int | None:
    """What a ledger line's ``verified`` must be by the formula, from the line alone;
    None for a kind without a public rule."""
    claimed, evidence = int(line["claimed"]), int(line["evidence"])
    kind = line["kind"]
    if kind == "bandwidth":
        return bandwidth_verified(claimed, evidence, int(line["fetched"]), params.tolerance)
    if kind == "storage":
        passed, checks = int(line.get("passed", 0)), int(line.get("checks", 0))
        return storage_verified(claimed, evidence, passed, checks, params.tolerance)
    if kind == "inference":
        passed, checks = int(line.get("passed", 0)), int(line.get("checks", 0))
        return inference_verified(claimed, evidence, passed, checks, params.tolerance)
    return None


def storage_committed(receipt_bodies: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """node -> byte-seconds its receipts' signed inventory commitments cover."""
    out: dict[str, int] = {}
    for rbody in receipt_bodies:
        r = parse_receipt(rbody)
        if r.storage is not None:
            span = Fraction(r.period_end) - Fraction(r.period_start)
            out[r.node] = out.get(r.node, 0) + math.floor(r.storage.bytes * span)
    return out


def claims_of(receipt_bodies: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], int]:
    """(node, kind, stream) -> claimed units, summed over receipts."""
    out: dict[tuple[str, str, str], int] = {}
    for rbody in receipt_bodies:
        r = parse_receipt(rbody)
        for stream, n in r.served.items():
            out[(r.node, "bandwidth", stream)] = out.get((r.node, "bandwidth", stream), 0) + n
        if r.stored_byte_seconds:
            k = (r.node, "storage", "-")
            out[k] = out.get(k, 0) + r.stored_byte_seconds
        if r.inference_seconds:
            k = (r.node, "inference", "-")
            out[k] = out.get(k, 0) + sum(r.inference_seconds.values())
    return out


def node_weights(
    lines: Sequence[Mapping[str, Any]], params: RewardParams
) -> dict[str, dict[str, Fraction]]:
    """kind -> node -> weight, from lines of kinds that have a verifier."""
    sums: dict[tuple[str, str], list[int]] = {}
    for line in lines:
        if not line["verifier"]:
            continue
        acc = sums.setdefault((line["kind"], line["node"]), [0, 0])
        acc[0] += int(line["claimed"])
        acc[1] += int(line["verified"])
    weights: dict[str, dict[str, Fraction]] = {}
    for (kind, node), (claimed, verified) in sums.items():
        weights.setdefault(kind, {})[node] = weight_of(claimed, verified, params.penalty)
    return weights


def _check_body(body: Mapping[str, Any], pinned: Mapping[str, str]) -> ExportSummary:
    params = RewardParams.from_json(body["params"])
    nodes: Mapping[str, Any] = body["nodes"]
    keys: dict[str, str] = {}
    for node, info in nodes.items():
        key = pinned.get(node, info["pubkey"])
        if node_id_for(key) != node:
            raise ExportInvalid(f"public key of {node} does not match its id")
        if node in pinned and info["pubkey"] != pinned[node]:
            raise ExportInvalid(f"export carries another key for {node}")
        keys[node] = key
    last: dict[str, tuple[int, str]] = {}
    bodies = []
    for envelope in body["receipts"]:
        rbody = envelope["body"]
        node = rbody["node"]
        if node not in keys:
            raise ExportInvalid(f"receipt of unknown node {node}")
        try:
            verify_object(keys[node], rbody, envelope["sig"])
            receipt = parse_receipt(rbody)
        except (SignatureError, ReceiptRejected) as exc:
            raise ExportInvalid(f"receipt {node}#{rbody.get('seq')}: {exc}") from exc
        if node in last and last[node][0] + 1 == receipt.seq and last[node][1] != receipt.prev:
            raise ExportInvalid(f"receipt {node}#{receipt.seq} does not link to its predecessor")
        last[node] = (receipt.seq, receipt_hash(rbody))
        bodies.append(rbody)
    claims = claims_of(bodies)
    lines = body["lines"]
    stated = {(ln["node"], ln["kind"], ln["stream"]): int(ln["claimed"]) for ln in lines}
    if stated != claims:
        raise ExportInvalid("claimed amounts are not the sums of the included receipts")
    committed = storage_committed(bodies)
    demand = 0
    for line in lines:
        node, kind, verified = line["node"], line["kind"], int(line["verified"])
        if not line["verifier"]:
            if verified:
                raise ExportInvalid(f"{node} {kind}: verified without a verifier")
            continue
        if kind == "storage" and int(line["evidence"]) != committed.get(node, 0):
            raise ExportInvalid(f"{node} storage: evidence is not the receipts' commitments")
        expected = line_verified(line, params)
        if expected is not None and verified != expected:
            where = f"{node} {kind} {line['stream']}"
            raise ExportInvalid(f"{where}: verified {verified}, not {expected}")
        if kind == "bandwidth":
            demand += verified
    if demand != body["demand"]:
        raise ExportInvalid(f"demand {body['demand']} is not the sum of verified bytes {demand}")
    supply = sum(int(nodes[n]["bandwidth"]) for n in {k[0] for k in claims})
    supply *= math.ceil(params.epoch_seconds)
    if supply != body["supply"]:
        raise ExportInvalid(f"supply {body['supply']} does not match the nodes' bandwidth")
    pool = pool_size(params, demand, supply)
    if pool != body["pool"]:
        raise ExportInvalid(f"pool {body['pool']}, formula gives {pool}")
    rewards = split_rewards(params, pool, node_weights(lines, params))
    stated_rewards = {r["node"]: int(r["reward"]) for r in body["rewards"] if int(r["reward"])}
    if stated_rewards != {n: v for n, v in rewards.items() if v}:
        raise ExportInvalid(f"rewards {stated_rewards} do not follow the formula {rewards}")
    return ExportSummary(int(body["epoch"]), len(nodes), len(bodies), pool, rewards)
