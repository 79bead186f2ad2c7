"""Inference marketplace end to end: an origin (the coordinator), edges that join it with the
real moderation plugin (nudenet's shipped detector in worker processes), and a live stream
pushed with ffmpeg whose frames hold a face.

- A job survives the death of its node: the edges are real ``meshcast edge`` processes;
  the node the scheduler picks is frozen (SIGSTOP) so the order is in flight on it, then
  SIGKILLed; the job completes on the other node and only that node is paid for it.
- A node that lies is caught by a spot check (a test node with its own valid key that
  signs a wrong output), and the API refuses bad requests clearly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nudenet import NudeDetector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.plugins import nsfw
from edge.service import EdgeService
from meshcast.config import EdgeConfig, NetworkConfig, OriginConfig
from meshcast.http import HttpService, json_error
from meshcast.inference import JobSpec, Order, make_result, parse_order, parse_result
from meshcast.keys import ADMIN_KIND, API_KIND
from meshcast.receipts import ChainHead, ReceiptBuilder, Usage
from meshcast.rendezvous import rendezvous_owner
from meshcast.rewards import RewardParams, verify_export
from meshcast.signing import NodeKey, verify_object
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url
from tests.e2e.test_ladder import wait_for_url
from tests.e2e.test_plugins import benign_then_image, push

pytestmark = pytest.mark.e2e

DAY = 86400.0
ROOT = Path(__file__).resolve().parents[2]


def origin_service(tmp_path: Path, **network: Any) -> OriginService:
    return OriginService(
        OriginConfig(
            data_dir=tmp_path / "origin",
            http_port=free_port(),
            rtmp_port=0,
            # One long epoch holds the whole test; the clock is moved to close it.
            network=NetworkConfig(
                rewards=RewardParams(epoch_seconds=DAY), close_grace=5, **network
            ),
        )
    )


async def poll(
    client: httpx.AsyncClient,
    url: str,
    ok: Callable[[dict[str, Any]], bool],
    within: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await client.get(url, headers=headers)
        if r.status_code == 200:
            body = r.json()
            if ok(body):
                return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url}: condition not met within {within} s: {body}")


async def face_stream(
    tmp_path: Path, ffmpeg: str, origin: OriginService, name: str
) -> tuple[Any, str]:
    """A live stream whose frames hold a face from the second second on; returns the
    ffmpeg process and the path of a segment that starts on the face."""
    video = await benign_then_image(tmp_path, ffmpeg, 1.0, 14.0)
    proc = await push(ffmpeg, rtmp_url(origin, origin.keys.create(name)), 14.0,
                      video=["-i", str(video)])  # fmt: skip
    playlist = f"{origin.url}/live/{name}/360p/index.m3u8"
    deadline = time.monotonic() + 40
    while True:
        text = (await wait_for_url(playlist)).text
        if len(numbers := re.findall(r"^(\d+)\.m4s$", text, re.M)) >= 3:
            break
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.3)
    return proc, f"/live/{name}/360p/{numbers[2]}.m4s"


async def detector_output(client: httpx.AsyncClient, origin: str, path: str) -> list[Any]:
    """nudenet's own detector, in this process, on the segment's first frame."""
    init = (await client.get(origin + path.rpartition("/")[0] + "/init.mp4")).content
    segment = (await client.get(origin + path)).content
    _, frame = nsfw.first_frame(init, segment)
    detections: list[Any] = NudeDetector().detect(frame)
    return json.loads(json.dumps(detections))


async def accepted_claim(client: httpx.AsyncClient, origin: str, journal: Path, exec_: str) -> None:
    """Wait until a receipt claiming ``exec_`` from this journal was accepted."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = journal.read_text().splitlines() if journal.exists() else []
        seqs = [
            b["seq"] for b in (json.loads(x)["body"] for x in lines)
            if exec_ in b["inference_seconds"]
        ]  # fmt: skip
        if seqs:
            node = json.loads(lines[0])["body"]["node"]
            status = (await client.get(f"{origin}/api/nodes/{node}")).json()
            if status["last_seq"] >= seqs[0]:
                return
        await asyncio.sleep(0.3)
    raise AssertionError(f"no accepted receipt claims {exec_}")


def forged_receipt(
    key: NodeKey, journal: Path, status: dict[str, Any], claims: dict[str, int]
) -> dict[str, Any]:
    """The next receipt of a node's chain, signed with its key, claiming ``claims``."""
    bodies = [json.loads(x)["body"] for x in journal.read_text().splitlines()]
    last = next(b for b in bodies if b["seq"] == status["last_seq"])
    builder = ReceiptBuilder(key, ChainHead(last["seq"], status["last_hash"], last["period_end"]))
    return builder.build(Usage(), time.time(), inference_seconds=claims)


# ---- a job survives the death of its node -------------------------------------------------


@asynccontextmanager
async def edge_process(
    tmp_path: Path, origin: str, index: int
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, NodeKey, Path]]:
    port = free_port()
    node_dir = tmp_path / f"node-{index}"
    key = NodeKey.create(node_dir / "node.key")
    log = (tmp_path / f"edge-{index}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshcast.cli", "edge", "--origin", origin, "--port", str(port),
        "--cache-dir", str(tmp_path / f"edge-{index}"), "--data", str(tmp_path / f"data-{index}"),
        "--join", origin, "--node-dir", str(node_dir), "--receipt-interval", "1",
        "--plugin", "moderation",
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
    )  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}", key, node_dir
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def test_an_inference_job_survives_the_death_of_its_node(
    tmp_path: Path, ffmpeg_cli: str
) -> None:
    origin = origin_service(tmp_path, spot_check_rate=0.0, inference_timeout=30.0)
    await origin.start()
    assert origin.coordinator is not None
    c = origin.coordinator
    api_key = origin.keys.create("alice", API_KIND)
    auth = {"Authorization": f"Bearer {api_key}"}
    try:
        async with (
            edge_process(tmp_path, origin.url, 0) as first,
            edge_process(tmp_path, origin.url, 1) as second,
            httpx.AsyncClient(timeout=10) as client,
        ):
            stream, path = await face_stream(tmp_path, ffmpeg_cli, origin, "cam")
            edges = {first[1]: first, second[1]: second}
            for url in edges:  # joined, and the moderation worker pool is up
                await poll(client, f"{url}/healthz", lambda b: True, 40)
                deadline = time.monotonic() + 40
                while (
                    'queue_depth{plugin="moderation"}'
                    not in (await client.get(f"{url}/metrics")).text
                ):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.3)
            await poll(client, f"{origin.url}/api/nodes",
                       lambda b: sum(n["live"] for n in b["nodes"]) == 2, 30)  # fmt: skip
            # Both idle, no GPU: the ring owner of the segment (it caches it) is placed first.
            owner = rendezvous_owner(path, list(edges))
            assert owner is not None
            a_proc, _, a_key, a_dir = edges[owner]
            b_url = next(u for u in edges if u != owner)
            b_key, b_dir = edges[b_url][2], edges[b_url][3]

            # A freezes: the order reaches its socket and stays in flight there.
            os.kill(a_proc.pid, signal.SIGSTOP)
            order = {"model": "moderation", "input": {"path": path}}
            r = await client.post(f"{origin.url}/api/inference", headers=auth, json=order)
            assert r.status_code == 202, r.text
            job = r.json()
            assert (
                job["state"] == "queued" and r.headers["location"] == f"/api/inference/{job['id']}"
            )
            url = f"{origin.url}/api/inference/{job['id']}"
            running = await poll(client, url, lambda b: b["state"] == "running", 20, auth)
            assert running["node"] == a_key.node_id
            assert [x["state"] for x in running["attempts"]] == ["running"]
            # ... and dies while the job runs on it.
            os.kill(a_proc.pid, signal.SIGKILL)
            await a_proc.wait()
            done = await poll(client, url, lambda b: b["state"] in ("done", "failed"), 60, auth)
            expected = await detector_output(client, origin.url, path)
            await stream.wait()

            assert done["state"] == "done", done
            first_try, second_try = done["attempts"]
            assert (first_try["node"], first_try["state"]) == (a_key.node_id, "failed")
            assert first_try["fault"] == "transport" and "connection lost" in first_try["error"]
            assert (second_try["node"], second_try["state"]) == (b_key.node_id, "done")
            assert done["node"] == b_key.node_id and done["exec"] == second_try["exec"]
            # the result is the detector's own output on that keyframe
            assert done["result"]["detections"] == expected
            assert any(d["class"] == "FACE_FEMALE" for d in expected)
            seconds = done["inference_seconds"]
            assert seconds >= 1 and second_try["inference_seconds"] == seconds

            # B claims the execution in its next receipt; A is dead and never did. A forged
            # claim for B's execution, signed with A's own key, is flagged and earns nothing.
            await accepted_claim(client, origin.url, b_dir / "receipts.jsonl", done["exec"])
            a_status = (await client.get(f"{origin.url}/api/nodes/{a_key.node_id}")).json()
            forged = forged_receipt(a_key, a_dir / "receipts.jsonl", a_status,
                                    {done["exec"]: seconds})  # fmt: skip
            r = await client.post(f"{origin.url}/api/receipts", json=forged)
            assert r.status_code == 201, r.text

            real = time.time()
            c.clock = lambda: real + 2 * DAY
            closed = await asyncio.to_thread(c.close_due)
            c.clock = time.time  # back to now: the edges leave the network normally
            assert closed
            rewards = {
                k.node_id: (await client.get(f"{origin.url}/api/rewards",
                                             params={"node": k.node_id})).json()
                for k in (a_key, b_key)
            }  # fmt: skip
            export = (await client.get(f"{origin.url}/api/epochs/{closed[0]}/export")).json()
    finally:
        await origin.close()

    def inference(node: str) -> dict[str, Any]:
        (epoch,) = rewards[node]["epochs"]
        kind: dict[str, Any] = epoch["kinds"]["inference"]
        return kind

    b_line = inference(b_key.node_id)
    assert b_line["claimed"] == b_line["verified"] >= seconds and b_line["flags"] == []
    a_line = inference(a_key.node_id)
    assert (a_line["claimed"], a_line["verified"], a_line["flags"]) == (seconds, 0, ["unknown_job"])
    assert rewards[b_key.node_id]["total_reward"] > 0
    verify_export(export, c.key.public_key)


def settled(job: dict[str, Any]) -> bool:
    """Failed, or done and its spot check decided (or found impossible)."""
    return job["state"] == "failed" or job["spot_check"]["state"] in (
        "passed", "failed", "disputed", "skipped",
    )  # fmt: skip


# ---- a lying node is caught by a spot check --------------------------------------------------


class LyingNode:
    """A contributor node with a valid key that answers every order without running the
    model: a signed result saying the frame holds nothing. It advertises a GPU, so the
    scheduler prefers it. Being registered, it is in the edges' peer ring: it serves media
    (from the origin) like an edge would."""

    def __init__(self, coordinator_url: str) -> None:
        self.key = NodeKey.generate()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.coordinator = coordinator_url
        self.coordinator_key = ""
        self.ran: list[str] = []
        # While set, orders are held unanswered until it is cleared (a node mid-job).
        self.hold: asyncio.Event | None = None
        self.client = httpx.AsyncClient(timeout=10)
        app = Starlette(
            routes=[
                Route("/_network/inference", self.run, methods=["POST"]),
                Route("/healthz", lambda _: JSONResponse({"status": "ok"})),
                Route("/{path:path}", self.media),
            ]
        )
        self.http = HttpService(app, "127.0.0.1", self.port, "liar")
        self.builder = ReceiptBuilder(self.key)

    async def run(self, request: Request) -> Response:
        order = parse_order((await request.json())["body"], self.key.node_id, time.time(), 30)
        self.ran.append(order.exec)
        if self.hold is not None:
            await self.hold.wait()
            return json_error(503, "released")
        result = make_result(order, {"media_time": 0.0, "detections": []}, 0.01, time.time())
        body = result.body()
        return JSONResponse({"body": body, "sig": self.key.sign_object(body)})

    async def media(self, request: Request) -> Response:
        r = await self.client.get(self.coordinator + request.url.path)
        return Response(r.content, r.status_code, media_type=r.headers.get("content-type"))

    def signed(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"body": body, "sig": self.key.sign_object(body)}

    async def join(self, client: httpx.AsyncClient) -> None:
        await self.http.start()
        capacity = {"disk_free": 1, "bandwidth": 1000, "cpus": 64, "gpu": ["Fake GPU"],
                    "plugins": ["moderation"]}  # fmt: skip
        body = {"kind": "register", "node": self.key.node_id, "pubkey": self.key.public_key,
                "url": self.url, "capacity": capacity, "ts": time.time()}  # fmt: skip
        r = await client.post(f"{self.coordinator}/api/nodes", json=self.signed(body))
        assert r.status_code == 200, r.text

    async def leave(self, client: httpx.AsyncClient) -> None:
        body = {"kind": "leave", "node": self.key.node_id, "ts": time.time()}
        r = await client.post(
            f"{self.coordinator}/api/nodes/{self.key.node_id}/leave", json=self.signed(body)
        )
        assert r.status_code == 200, r.text


async def test_spot_checks_catch_a_lying_node_and_bad_requests_are_refused(
    tmp_path: Path, ffmpeg_cli: str
) -> None:
    origin = origin_service(tmp_path, spot_check_rate=1.0, node_ttl=120.0)
    await origin.start()
    assert origin.coordinator is not None
    c = origin.coordinator
    alice = {"Authorization": f"Bearer {origin.keys.create('alice', API_KIND)}"}
    bob = {"Authorization": f"Bearer {origin.keys.create('bob', API_KIND)}"}
    admin = {"Authorization": f"Bearer {origin.keys.create('ops', ADMIN_KIND)}"}
    edges: list[EdgeService] = []
    for i in range(2):
        port = free_port()
        node_dir = tmp_path / f"node-{i}"
        NodeKey.create(node_dir / "node.key")
        edges.append(
            EdgeService(
                EdgeConfig(
                    origin=origin.url,
                    port=port,
                    cache_dir=tmp_path / f"edge-{i}",
                    join=origin.url,
                    node_dir=node_dir,
                    receipt_interval=1.0,
                    heartbeat=0.5,
                    # the first edge also runs Whisper: the only node for captions jobs
                    plugins=("moderation", "captions") if i == 0 else ("moderation",),
                )
            )
        )
    liar = LyingNode(origin.url)
    api = f"{origin.url}/api/inference"
    try:
        for edge in edges:
            await edge.start()
        async with httpx.AsyncClient(timeout=10) as client:
            # bad requests: clear reasons, never a 5xx
            assert (await client.post(api, json={})).status_code == 401
            bad_key = {"Authorization": "Bearer api_nope"}
            assert (await client.post(api, json={}, headers=bad_key)).status_code == 401
            for body, reason in (
                (b"{nope", "not JSON"),
                (json.dumps({"model": "gpt", "input": {"path": "/live/x/360p/1.m4s"}}), "model"),
                (json.dumps({"model": "moderation", "input": {"path": "/live/x/../../etc"}}),
                 "segment"),
            ):  # fmt: skip
                r = await client.post(api, content=body, headers=alice)
                assert r.status_code == 400 and reason in r.json()["error"], r.text
            r = await client.post(api, content=b"x" * 20_000, headers=alice)
            assert r.status_code == 413
            assert (await client.get(f"{api}/j0000000000000000", headers=alice)).status_code == 404
            assert (await client.get(f"{api}/../x", headers=alice)).status_code == 404

            await liar.join(client)
            stream, path = await face_stream(tmp_path, ffmpeg_cli, origin, "show")
            order = {"model": "moderation", "input": {"path": path}}
            r = await client.post(api, headers=alice, json=order)
            assert r.status_code == 202, r.text
            url = f"{api}/{r.json()['id']}"
            # only its owner (or an admin) sees a job
            assert (await client.get(url, headers=bob)).status_code == 404
            doc = await poll(client, url, lambda b: b["spot_check"]["state"] not in
                             ("none", "pending", "tiebreak"), 60, admin)  # fmt: skip
            expected = await detector_output(client, origin.url, path)

            # Bad input on the honest nodes: both say why, and the job fails with it.
            await liar.leave(client)
            r = await client.post(api, headers=alice,
                                  json={"model": "moderation",
                                        "input": {"path": "/live/show/360p/9999.m4s"}})  # fmt: skip
            missing = await poll(client, f"{api}/{r.json()['id']}",
                                 lambda b: b["state"] == "failed", 60, alice)  # fmt: skip
            # An input the model cannot use (bytes that are no video): the same, with the
            # decoder's reason.
            junk = origin.config.data_dir / "vod" / "junk" / "360p"
            junk.mkdir(parents=True)
            (junk / "init.mp4").write_bytes(b"\0\0\0\x08free")
            (junk / "1.m4s").write_bytes(b"not a video segment" * 100)
            order = {"model": "moderation", "input": {"path": "/vod/junk/360p/1.m4s"}}
            r = await client.post(api, headers=alice, json=order)
            unusable = await poll(client, f"{api}/{r.json()['id']}", settled, 60, alice)
            # A captions job: the audio segment through the real Whisper model.
            audio = (await client.get(f"{origin.url}/live/show/audio/index.m3u8")).text
            number = re.findall(r"^(\d+)\.m4s$", audio, re.M)[1]
            order = {"model": "captions", "input": {"path": f"/live/show/audio/{number}.m4s"}}
            r = await client.post(api, headers=alice, json=order)
            assert r.status_code == 202, r.text
            captions = await poll(client, f"{api}/{r.json()['id']}", settled, 60, alice)
            await stream.wait()

            # The liar claims its execution in a receipt of its own.
            (lie,) = liar.ran
            r = await client.post(f"{origin.url}/api/receipts",
                                  json=liar.builder.build(Usage(), time.time(),
                                                          inference_seconds={lie: 1}))  # fmt: skip
            assert r.status_code == 201, r.text
            checkers = [x for x in doc["spot_check"]["executions"] if x["state"] == "done"]
            for edge, x in ((e, x) for e in edges for x in checkers):
                assert edge.agent is not None
                if x["node"] == edge.agent.key.node_id:
                    await accepted_claim(client, origin.url, edge.agent.journal, x["exec"])
            real = time.time()
            c.clock = lambda: real + 2 * DAY
            closed = await asyncio.to_thread(c.close_due)
            c.clock = time.time  # back to now: the edges leave the network normally
            assert closed
            export = (await client.get(f"{origin.url}/api/epochs/{closed[0]}/export")).json()

            # A node runs only orders signed by its coordinator, for itself, once.
            assert edges[0].agent is not None and edges[1].agent is not None
            me = edges[0].agent.key
            order = Order("j" + "1" * 16, "j" + "1" * 16 + ".1", me.node_id,
                          JobSpec("moderation", path), time.time())  # fmt: skip
            body = order.body()
            node_api = f"{edges[0].url}/_network/inference"
            forged = {"body": body, "sig": NodeKey.generate().sign_object(body)}
            r = await client.post(node_api, json=forged)
            assert r.status_code == 401 and "signature" in r.json()["error"]
            signed = {"body": body, "sig": c.key.sign_object(body)}
            r = await client.post(node_api, json=signed)
            assert r.status_code == 200, r.text
            result = parse_result(r.json()["body"], order)
            verify_object(me.public_key, r.json()["body"], r.json()["sig"])
            assert result.output["detections"] == expected
            r = await client.post(node_api, json=signed)
            assert r.status_code == 409 and "already run" in r.json()["error"]
            theirs = Order(order.job, order.job + ".2", edges[1].agent.key.node_id,
                           order.spec, time.time())  # fmt: skip
            misdirected = {"body": theirs.body(), "sig": c.key.sign_object(theirs.body())}
            r = await client.post(node_api, json=misdirected)
            assert r.status_code == 409 and "another node" in r.json()["error"]
    finally:
        for edge in edges:
            await edge.close()
        await liar.http.close()
        await liar.client.aclose()
        await origin.close()

    assert doc["attempts"][0]["node"] == liar.key.node_id  # the GPU node got the job
    assert doc["spot_check"]["state"] == "failed", doc
    assert liar.key.node_id in doc["spot_check"]["reason"]
    assert [x["purpose"] for x in checkers] == ["check", "tiebreak"]
    assert {x["node"] for x in checkers} == {e.agent.key.node_id for e in edges if e.agent}
    assert doc["result"]["detections"] == expected  # the majority's output, not the lie
    assert missing["reason"].startswith("input was refused on 2 nodes")
    assert "not found" in missing["reason"]
    assert [x["fault"] for x in missing["attempts"]] == ["input", "input"]
    assert unusable["state"] == "failed", unusable
    assert unusable["reason"].startswith("input was refused on 2 nodes: node answered 422: input")
    assert "unusable" in unusable["reason"]
    assert edges[0].agent is not None and captions["node"] == edges[0].agent.key.node_id
    assert captions["state"] == "done" and isinstance(captions["result"]["text"], str)
    assert isinstance(captions["result"]["words"], list)  # a tone: no speech, no words needed
    assert captions["spot_check"]["reason"] == "no other live node runs the captions plugin"

    lines = {ln["node"]: ln for ln in export["body"]["lines"] if ln["kind"] == "inference"}
    cheat = lines[liar.key.node_id]
    assert cheat["verified"] == 0 and cheat["flags"] == ["spot_check_failed"]
    assert (cheat["passed"], cheat["checks"]) == (0, 1)
    for x in checkers:
        line = lines[x["node"]]
        assert line["verified"] == line["claimed"] > 0 and (line["passed"], line["checks"]) == (
            1,
            1,
        )
    verify_export(export, c.key.public_key)
    assert re.fullmatch(r"j[0-9a-f]{16}\.1", lie)


async def test_jobs_survive_an_origin_restart(tmp_path: Path) -> None:
    """A job running when the origin stops is queued again by the next start (the database
    is the queue) and completes; the lost execution is on record, blamed on nobody."""
    first = origin_service(tmp_path, node_ttl=300.0)
    await first.start()
    key = first.keys.create("alice", API_KIND)
    auth = {"Authorization": f"Bearer {key}"}
    node = LyingNode(first.url)  # here simply a node that answers late, then at once
    node.hold = asyncio.Event()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await node.join(client)
            order = {"model": "moderation", "input": {"path": "/live/x/360p/1.m4s"}}
            job = (await client.post(f"{first.url}/api/inference", headers=auth,
                                     json=order)).json()  # fmt: skip
            url = f"/api/inference/{job['id']}"
            await poll(client, first.url + url, lambda b: b["state"] == "running", 20, auth)
            await first.close()  # the execution is in flight on the node
            node.hold.set()
            node.hold = None
            second = OriginService(first.config)
            await second.start()
            try:
                done = await poll(client, f"{second.url}{url}",
                                  lambda b: b["state"] == "done", 30, auth)  # fmt: skip
            finally:
                await second.close()
    finally:
        await node.http.close()
        await node.client.aclose()
    lost, again = done["attempts"]
    assert lost["state"] == "failed" and lost["fault"] == "restart"
    assert "restarted" in lost["error"]
    assert again["state"] == "done" and again["node"] == node.key.node_id
    assert node.ran == [lost["exec"], again["exec"]]


async def test_pinned_content_is_moderated_by_its_cid(tmp_path: Path) -> None:
    """Input by CID: an image pinned on the network's storage (POST /api/pins) is moderated
    by nodes that run both the moderation and the storage plugin; the output is nudenet's
    own on that image, and the spot check on the other replica agrees. A CID nobody pinned
    fails with the nodes' reason."""
    import cv2

    from meshcast.keys import S3_KIND, KeyStore
    from tests.e2e.test_plugins import crafted_image

    origin = origin_service(tmp_path, spot_check_rate=1.0)
    await origin.start()
    data = tmp_path / "data"  # the storage ring's shared secret and the S3 key
    s3_key = KeyStore(data).create("uploader", S3_KIND).replace(" ", ":")
    edges = []
    for i in range(2):
        node_dir = tmp_path / f"node-{i}"
        NodeKey.create(node_dir / "node.key")
        edges.append(
            EdgeService(
                EdgeConfig(
                    origin=origin.url,
                    port=free_port(),
                    cache_dir=tmp_path / f"edge-{i}",
                    data_dir=data,
                    join=origin.url,
                    node_dir=node_dir,
                    heartbeat=0.5,
                    plugins=("moderation", "storage"),
                )
            )
        )
    alice = {"Authorization": f"Bearer {origin.keys.create('alice', API_KIND)}"}
    api = f"{origin.url}/api/inference"
    try:
        for edge in edges:
            await edge.start()
        ok, png = cv2.imencode(".png", crafted_image())
        assert ok
        async with httpx.AsyncClient(timeout=30) as client:
            deadline = time.monotonic() + 20
            while not all(len(e.edge.ring.alive_peers()) == 1 for e in edges):
                assert time.monotonic() < deadline, "the two nodes never formed a ring"
                await asyncio.sleep(0.2)
            r = await client.post(
                f"{edges[0].url}/api/pins",
                params={"name": "crafted.png"},
                content=png.tobytes(),
                headers={"Authorization": f"Bearer {s3_key}"},
            )
            assert r.status_code == 201, r.text
            cid = r.json()["cid"]
            r = await client.post(
                api, headers=alice, json={"model": "moderation", "input": {"cid": cid}}
            )
            assert r.status_code == 202, r.text
            assert r.json()["input"] == {"path": f"/ipfs/{cid}"}
            job = await poll(client, f"{api}/{r.json()['id']}", settled, 60, alice)
            assert job["state"] == "done", job
            expected = NudeDetector().detect(cv2.imdecode(png, cv2.IMREAD_COLOR))
            assert job["result"]["detections"] == json.loads(json.dumps(expected))
            assert job["result"]["detections"], "the detector finds the face"
            assert job["spot_check"]["state"] == "passed", job["spot_check"]

            unknown = "bafkrei" + "a" * 52
            r = await client.post(
                api, headers=alice, json={"model": "moderation", "input": {"cid": unknown}}
            )
            assert r.status_code == 202, r.text
            failed = await poll(client, f"{api}/{r.json()['id']}", settled, 60, alice)
            assert failed["state"] == "failed" and "not pinned" in failed["reason"], failed
            r = await client.post(
                api, headers=alice, json={"model": "moderation", "input": {"cid": "bafy-nope"}}
            )
            assert r.status_code == 400 and "cid" in r.json()["error"]
    finally:
        for edge in edges:
            await edge.close()
        await origin.close()


async def test_captions_job_on_pinned_audio_content(tmp_path: Path, ffmpeg_cli: str) -> None:
    """The captions model on a whole audio file (what a node runs for a CID input): the
    real Whisper model transcribes espeak-ng speech in a WAV file libavformat opens."""
    from edge.plugins import asr
    from tests.e2e.test_plugins import LEAD, SPOKEN, speech_track, word_error_rate, words

    wav, _ = await speech_track(tmp_path, ffmpeg_cli, 8.0)
    asr.load_model()
    output = await asyncio.to_thread(asr.object_job, wav.read_bytes())
    assert word_error_rate(words(SPOKEN), words(output["text"])) <= 0.35, output["text"]
    starts = [w[0] for w in output["words"]]
    assert starts == sorted(starts) and abs(starts[0] - LEAD) < 1.5  # speech starts at LEAD
