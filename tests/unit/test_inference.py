"""Inference marketplace, sans-IO and ledger side: job validation, signed orders and
results, placement scoring, spot-check comparison, the coordinator's job records (retries,
input faults, restart) and the InferenceVerifier at epoch close. Real keys, real SQLite,
no HTTP (tests/e2e/test_inference.py runs the same code against real edges)."""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from edge.plugins.workers import InferencePool, plugin_metrics
from meshcast.cid import cid_for
from meshcast.config import NetworkConfig
from meshcast.inference import (
    BOX_TOLERANCE_PX,
    Candidate,
    JobRejected,
    JobSpec,
    Order,
    billed_seconds,
    job_of_exec,
    make_result,
    output_hash,
    outputs_agree,
    parse_job_request,
    parse_order,
    parse_result,
    rank,
    text_similarity,
    verdict,
)
from meshcast.receipts import ReceiptBuilder, Usage
from meshcast.rendezvous import rendezvous_owner
from meshcast.rewards import RewardParams, inference_verified, verify_export
from meshcast.signing import NodeKey
from origin.coordinator import Coordinator, NodeRecord
from origin.inference import Marketplace, Outcome, Work
from tests.unit.test_ledger import Clock

EPOCH = 100.0
T0 = 1_000_000.0
SEG = "/live/show/360p/7.m4s"


# ---- job requests ---------------------------------------------------------------------


def test_job_requests_are_validated_strictly() -> None:
    spec = parse_job_request({"model": "moderation", "input": {"path": SEG}})
    assert spec == JobSpec("moderation", SEG) and spec.init_path == "/live/show/360p/init.mp4"
    assert parse_job_request({"model": "captions", "input": {"path": "/vod/a1/audio/3.m4s"}})
    assert spec.cid is None and spec.plugins == ("moderation",)
    # Pinned content by CID: needs a node that also runs the storage plugin.
    cid = cid_for(bytes(32))
    by_cid = parse_job_request({"model": "captions", "input": {"cid": cid}})
    assert by_cid == JobSpec("captions", f"/ipfs/{cid}") and by_cid.cid == cid
    assert by_cid.plugins == ("captions", "storage")
    assert parse_job_request({"model": "captions", "input": {"path": f"/ipfs/{cid}"}}) == by_cid
    bad: list[tuple[Any, str]] = [
        ([], "object"),
        ({"model": "gpt", "input": {"path": SEG}}, "model must be one of: captions, moderation"),
        ({"model": "moderation"}, "input must be"),
        ({"model": "moderation", "input": {"path": SEG}, "x": 1}, "unknown fields: x"),
        ({"model": "moderation", "input": {"path": SEG, "cid": "x"}}, "input must be"),
        ({"model": "moderation", "input": {"path": "/live/show/../x/360p/1.m4s"}}, "segment"),
        ({"model": "moderation", "input": {"path": "/live/show/360p/%2e%2e/1.m4s"}}, "segment"),
        ({"model": "moderation", "input": {"path": "/etc/passwd"}}, "segment"),
        ({"model": "moderation", "input": {"path": "/live/show/360p/init.mp4"}}, "segment"),
        ({"model": "moderation", "input": {"path": "/live/show/master.m3u8"}}, "segment"),
        ({"model": "moderation", "input": {"path": "/live/" + "a" * 300 + "/360p/1.m4s"}}, "seg"),
        ({"model": "moderation", "input": {"path": 7}}, "segment"),
        ({"model": "moderation", "input": {"path": "/live/show/audio/1.m4s"}}, "video rendition"),
        ({"model": "captions", "input": {"path": SEG}}, "audio rendition"),
        ({"model": "moderation", "input": {"cid": "bafy-nope"}}, "input cid"),
        ({"model": "moderation", "input": {"cid": 5}}, "segment"),
        ({"model": "moderation", "input": {"path": "/ipfs/Qm" + "x" * 44}}, "input cid"),
        ({"model": "moderation", "input": {"path": "/ipfs/../etc/passwd"}}, "input cid"),
    ]
    for raw, reason in bad:
        with pytest.raises(JobRejected) as info:
            parse_job_request(raw)
        assert info.value.code == 400 and reason in info.value.reason, (raw, info.value)


# ---- signed messages ------------------------------------------------------------------


def test_orders_and_results_are_bound_to_node_execution_and_output() -> None:
    node = NodeKey.generate()
    order = Order("j0123456789abcdef", "j0123456789abcdef.2", node.node_id,
                  JobSpec("moderation", SEG), T0)  # fmt: skip
    assert job_of_exec(order.exec) == order.job and job_of_exec("j1.2") is None
    assert parse_order(order.body(), node.node_id, T0 + 1, 30) == order
    with pytest.raises(JobRejected, match="another node"):
        parse_order(order.body(), NodeKey.generate().node_id, T0, 30)
    with pytest.raises(JobRejected, match="within 30 s"):
        parse_order(order.body(), node.node_id, T0 + 60, 30)
    with pytest.raises(JobRejected, match="do not match"):
        parse_order(dict(order.body(), exec="j0123456789abcdee.2"), node.node_id, T0, 30)
    with pytest.raises(JobRejected, match="segment"):
        parse_order(dict(order.body(), input={"path": "/../x"}), node.node_id, T0, 30)

    output = {"media_time": 14.0, "detections": [{"class": "FACE_FEMALE", "score": 0.8,
                                                  "box": [1, 2, 3, 4]}]}  # fmt: skip
    result = make_result(order, output, 0.05, T0 + 1)
    assert result.seconds == 1 and result.output_hash == output_hash(output)
    assert parse_result(json.loads(json.dumps(result.body())), order) == result
    forged = dict(result.body(), output={"media_time": 14.0, "detections": []})
    with pytest.raises(JobRejected, match="output_hash"):
        parse_result(forged, order)
    other = Order(order.job, order.job + ".3", order.node, order.spec, T0)
    with pytest.raises(JobRejected, match="another exec"):
        parse_result(result.body(), other)
    garbage = {"media_time": 1, "detections": [{"class": "X", "score": "high", "box": []}]}
    with pytest.raises(JobRejected, match="not a moderation output"):
        parse_result(dict(result.body(), output=garbage, output_hash=output_hash(garbage)), order)
    assert [billed_seconds(w) for w in (0.0, 0.01, 1.0, 1.01, float("nan"))] == [1, 1, 1, 2, 1]


# ---- placement --------------------------------------------------------------------------


def test_placement_prefers_gpu_then_locality_then_idle_cpus() -> None:
    urls = [f"http://127.0.0.1:{9000 + i}" for i in range(4)]
    owner = rendezvous_owner(SEG, urls)
    assert owner is not None
    nodes = [Candidate(f"n{i}", u, cpus=4, gpu=False, running=0) for i, u in enumerate(urls)]
    # the ring owner of the segment (it caches it) wins among equals
    assert rank(nodes, urls, SEG, "j1")[0].url == owner
    # ... unless it is loaded past a full CPU's worth of work
    busy = [Candidate(c.node, c.url, 4, False, 8 if c.url == owner else 0) for c in nodes]
    assert rank(busy, urls, SEG, "j1")[0].url != owner
    # a GPU beats locality
    gpu = [Candidate(c.node, c.url, 4, c.url == urls[(urls.index(owner) + 1) % 4], 0)
           for c in nodes]  # fmt: skip
    assert rank(gpu, urls, SEG, "j1")[0].gpu
    # ties spread by job: not every job of a non-owned input lands on one node
    others = [c for c in nodes if c.url != owner]
    firsts = {rank(others, urls, SEG, f"j{i}")[0].node for i in range(40)}
    assert len(firsts) == 3


# ---- spot-check comparison ------------------------------------------------------------------


def _det(cls: str, score: float, box: list[int]) -> dict[str, Any]:
    return {"class": cls, "score": score, "box": box}


def test_outputs_agree_within_tolerances_and_verdicts() -> None:
    face = _det("FACE_FEMALE", 0.81, [10, 20, 30, 40])
    a = {"media_time": 2.0, "detections": [face, _det("ARMPITS_EXPOSED", 0.3, [0, 0, 5, 5])]}
    shifted = _det("FACE_FEMALE", 0.8, [10 + BOX_TOLERANCE_PX, 20, 30, 40])
    near = {"detections": [_det("ARMPITS_EXPOSED", 0.31, [1, 0, 5, 6]), shifted]}
    assert outputs_agree("moderation", a, near)
    far_box = {"detections": [_det("FACE_FEMALE", 0.81, [20, 20, 30, 40]), a["detections"][1]]}
    far_score = {"detections": [_det("FACE_FEMALE", 0.7, [10, 20, 30, 40]), a["detections"][1]]}
    missing = {"detections": [a["detections"][0]]}
    other = {"detections": [_det("FACE_MALE", 0.81, [10, 20, 30, 40]), a["detections"][1]]}
    for b in (far_box, far_score, missing, other, {"detections": []}):
        assert not outputs_agree("moderation", a, b), b
    assert outputs_agree("moderation", {"detections": []}, {"detections": []})

    said = "The quick brown fox jumps over the lazy dog"
    assert text_similarity(said, "the quick brown fox, jumps over the lazy dog!") == 1.0
    assert outputs_agree(
        "captions", {"text": said}, {"text": "the quick brown fox jumps over a lazy dog"}
    )
    assert not outputs_agree("captions", {"text": said}, {"text": "subscribe to my channel"})

    empty = {"detections": []}
    assert verdict("moderation", a, near, None) == "passed"
    assert verdict("moderation", empty, a, None) == "disputed"
    assert verdict("moderation", empty, a, near) == "original_failed"
    assert verdict("moderation", a, empty, near) == "check_failed"
    assert verdict("moderation", a, empty, far_score) == "disputed"


def test_inference_verified_rule() -> None:
    assert inference_verified(10, 10, 0, 0, 0.05) == 10
    assert inference_verified(10, 4, 0, 0, 0.05) == 4
    assert inference_verified(10, 10, 1, 2, 0.05) == 5  # half its spot checks failed
    assert inference_verified(0, 0, 0, 0, 0.05) == 0


# ---- the coordinator's records and the verifier ----------------------------------------------


class Node:
    def __init__(self, c: Coordinator, clock: Clock, port: int) -> None:
        self.key = NodeKey.generate()
        self.url = f"http://127.0.0.1:{port}"
        self.builder = ReceiptBuilder(self.key)
        self.c, self.clock = c, clock
        body = {"kind": "register", "node": self.key.node_id, "pubkey": self.key.public_key,
                "url": self.url, "capacity": {"bandwidth": 1000, "cpus": 2, "plugins":
                ["moderation"]}, "ts": clock.t}  # fmt: skip
        c.register({"body": body, "sig": self.key.sign_object(body)})
        record = c._node(self.key.node_id)
        assert record is not None
        self.record: NodeRecord = record

    def receipt(self, seconds: dict[str, int]) -> dict[str, Any]:
        return self.c.accept_receipt(
            self.builder.build(Usage(), self.clock.t, period_start=T0, inference_seconds=seconds)
        )


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 1)


@pytest.fixture
def market(tmp_path: Path, clock: Clock) -> Iterator[Marketplace]:
    config = NetworkConfig(
        rewards=RewardParams(epoch_seconds=EPOCH), close_grace=10, spot_check_rate=0.0,
        inference_attempts=3,
    )  # fmt: skip
    c = Coordinator(tmp_path, config, clock=clock)  # every kind's verifier by default
    yield c.inference
    c.db.close()


OUT = {"media_time": 2.0, "detections": [_det("FACE_FEMALE", 0.8, [1, 2, 3, 4])]}


def _run(m: Marketplace, job: str, node: Node, outcome: Outcome, purpose: str = "run") -> str:
    """One execution recorded as the dispatcher does, minus the HTTP exchange."""
    row = m._job(job)
    assert row is not None
    work = next((w for w in m._work() if w.job == job), None)
    if work is None:  # a job that is done: a spot check of it
        work = Work(job, JobSpec(row["model"], row["path"]), purpose, row["created"],
                    frozenset(), 0, None)  # fmt: skip
    order = m._begin(work, node.record)
    m._end(work, order, outcome)
    return order.exec


def _ok(output: Any = OUT, wall: float = 1.5) -> Outcome:
    return Outcome(wall, output=output, output_hash=output_hash(output))


def test_retries_input_faults_and_restart(market: Marketplace, clock: Clock) -> None:
    a, b, c = (Node(market.c, clock, 9001 + i) for i in range(3))
    spec = JobSpec("moderation", SEG)
    job = market.submit(spec, "alice")["id"]
    lost = Outcome(0.2, error="connection lost: ReadError()", fault="transport")
    _run(market, job, a, lost)
    work = market._work()
    assert [w.job for w in work] == [job] and work[0].exclude == {a.key.node_id}
    _run(market, job, b, _ok())
    doc = market.job_json(job)
    assert doc is not None and doc["state"] == "done" and doc["node"] == b.key.node_id
    assert [(x["node"], x["state"]) for x in doc["attempts"]] == [
        (a.key.node_id, "failed"), (b.key.node_id, "done")]  # fmt: skip
    assert doc["attempts"][0]["error"].startswith("connection lost")
    assert doc["result"] == OUT and doc["inference_seconds"] == 2  # metered 1.5 s -> 2

    # a busy node is not blamed: not excluded, no attempt used
    waiting = market.submit(JobSpec("moderation", "/live/show/360p/11.m4s"), "alice")["id"]
    _run(market, waiting, a, Outcome(0.01, error="node answered 503: full", fault="busy"))
    (item,) = [w for w in market._work() if w.job == waiting]
    assert item.exclude == frozenset() and item.failed == 0
    _run(market, waiting, a, _ok())
    assert market.job_json(waiting)["state"] == "done"  # type: ignore[index]

    # nobody to run it: a job waits for a capable node, then fails saying so; a spot check
    # without another node is skipped, a tie without a third node disputed
    lonely = market.submit(JobSpec("moderation", "/live/show/360p/12.m4s"), "alice")["id"]
    (item,) = [w for w in market._work() if w.job == lonely]
    market._unplaceable(item, 0)
    assert market.job_json(lonely)["state"] == "queued"  # type: ignore[index]
    clock.t += market.config.inference_queue_timeout + 1
    market._unplaceable(item, 0)
    assert market.job_json(lonely)["reason"] == "no live node runs the moderation plugin"  # type: ignore[index]
    market._unplaceable(Work(waiting, item.spec, "check", 0, frozenset(), 0, None), 1)
    assert market.job_json(waiting)["spot_check"]["state"] == "skipped"  # type: ignore[index]
    market._unplaceable(Work(waiting, item.spec, "tiebreak", 0, frozenset(), 0, None), 1)
    assert market.job_json(waiting)["spot_check"]["state"] == "disputed"  # type: ignore[index]

    # input faults on two nodes fail the job with the reason, without a third try
    bad = market.submit(JobSpec("moderation", "/live/show/360p/8.m4s"), "alice")["id"]
    crash = Outcome(0.1, error="node answered 500: worker died", fault="crash")
    _run(market, bad, a, crash)
    assert market.job_json(bad)["state"] == "queued"  # type: ignore[index]
    _run(market, bad, c, crash)
    failed = market.job_json(bad)
    assert failed is not None and failed["state"] == "failed"
    assert "crashed the inference worker on 2 nodes" in failed["reason"]

    # attempts are bounded
    flaky = market.submit(JobSpec("moderation", "/live/show/360p/9.m4s"), "alice")["id"]
    for node in (a, b, c):
        _run(market, flaky, node, Outcome(60, error="no answer within 60 s", fault="transport"))
    assert "3 executions failed" in market.job_json(flaky)["reason"]  # type: ignore[index]

    # a restart re-queues what was running
    running = market.submit(JobSpec("moderation", "/live/show/360p/10.m4s"), "alice")["id"]
    market._begin(market._work()[0], a.record)
    assert market.job_json(running)["state"] == "running"  # type: ignore[index]
    again = Marketplace(market.c)
    assert again.recover() == 1
    doc = again.job_json(running)
    assert doc is not None and doc["state"] == "queued"
    assert doc["attempts"][0]["fault"] == "restart"
    assert again._work()[0].exclude == frozenset()  # a restart is nobody's fault


def test_verifier_pays_completed_executions_once_and_flags_the_rest(
    market: Marketplace, clock: Clock
) -> None:
    a, b, c = (Node(market.c, clock, 9001 + i) for i in range(3))
    job = market.submit(JobSpec("moderation", SEG), "alice")["id"]
    first = _run(market, job, a, Outcome(0.1, error="connection lost", fault="transport"))
    done = _run(market, job, b, _ok(wall=2.2))  # metered 3 s
    # spot-checked job: a liar's output is outvoted by two honest re-executions
    checked = market.submit(JobSpec("moderation", "/live/show/360p/8.m4s"), "alice")["id"]
    lie = _run(market, checked, c, _ok({"media_time": 2.0, "detections": []}, wall=0.5))
    market._set_spot(checked, "pending", None)
    check = _run(market, checked, a, _ok(wall=0.5), "check")
    assert market.job_json(checked)["spot_check"]["state"] == "tiebreak"  # type: ignore[index]
    third = _run(market, checked, b, _ok(wall=0.5), "tiebreak")
    doc = market.job_json(checked)
    assert doc is not None and doc["spot_check"]["state"] == "failed"
    assert doc["result"] == OUT  # the majority's output replaces the liar's
    assert c.key.node_id in doc["spot_check"]["reason"]

    b.receipt({done: 3, third: 1})
    a.receipt({first: 1, check: 1})  # claims the execution it lost, and its check
    c.receipt({lie: 1, "j00000000000000ff.1": 5})  # its minority run and a job that never was
    clock.t = T0 + EPOCH + 10
    assert market.c.close_due() == [10000]
    export = market.c.export(10000)
    assert export is not None
    lines = {ln["node"]: ln for ln in export["body"]["lines"] if ln["kind"] == "inference"}
    la, lb, lc = (lines[n.key.node_id] for n in (a, b, c))
    assert (lb["claimed"], lb["evidence"], lb["verified"], lb["flags"]) == (4, 4, 4, [])
    assert (lb["passed"], lb["checks"]) == (1, 1)
    assert (la["claimed"], la["evidence"], la["verified"]) == (2, 1, 1)
    assert la["flags"] == ["unknown_job"]
    assert (lc["verified"], lc["checks"], lc["passed"]) == (0, 1, 0)
    assert lc["flags"] == ["spot_check_failed", "unknown_job"]
    rewards = {r["node"]: r["reward"] for r in export["body"]["rewards"]}
    assert rewards[c.key.node_id] == 0 and rewards[b.key.node_id] > rewards[a.key.node_id] == 0
    verify_export(export, market.c.key.public_key)  # the public rule gives the same numbers

    # the same execution claimed again in a later epoch earns nothing
    clock.t = T0 + EPOCH + 20
    b.receipt({done: 3})
    clock.t = T0 + 2 * EPOCH + 10
    assert market.c.close_due() == [10001]
    later = market.c.export(10001)
    assert later is not None
    (line,) = [ln for ln in later["body"]["lines"] if ln["kind"] == "inference"]
    assert (line["claimed"], line["verified"], line["flags"]) == (3, 0, ["already_counted"])
    verify_export(later, market.c.key.public_key)


async def test_a_worker_process_that_dies_is_replaced() -> None:
    """An input that kills the worker process breaks a ProcessPoolExecutor for good; the
    pool starts fresh workers for the next job instead (edge/plugins/workers.py)."""
    pool = InferencePool("t", plugin_metrics(CollectorRegistry()), queue=2)
    try:
        dying = pool.submit(os._exit, 3)
        assert dying is not None
        with pytest.raises(BrokenProcessPool):
            await dying
        again = pool.submit(operator.add, 2, 3)
        assert again is not None and (await again).value == 5
        assert pool.inflight == 0
    finally:
        await pool.close()
