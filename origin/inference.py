"""Inference marketplace on the coordinator: jobs submitted over the API, placed on capable
contributor nodes, retried when a node fails or dies, metered, spot-checked, and verified
when an epoch closes (``InferenceVerifier``).

- ``POST /api/inference`` (API or admin key): ``{"model", "input": {"path"}}``
  (``meshcast/inference.py``) -> 202 and the job, ``queued``. ``GET /api/inference/ID``
  (its owner or an admin): state ``queued | running | done | failed``, every execution
  (node, error), the result, the metered seconds and the spot check.
- Placement (``meshcast.inference.rank``): live registered nodes whose advertised
  ``capacity.plugins`` has the model's plugin, at most ``inference_per_node`` executions in
  flight each; GPU first, then the ring owner of the input segment (it already has it
  cached, or fetches it for the ring anyway), then the least loaded per CPU.
- Dispatch: ``POST {node}/_network/inference`` with an order signed by the coordinator key;
  the node answers a result signed by its own key, checked against its registered key.
  An execution that fails (connection lost, no answer within ``inference_timeout``, 5xx,
  bad signature or malformed result) is retried on another node, up to
  ``inference_attempts`` executions. Input faults (the node could not decode the input,
  or its worker process crashed on it) on two different nodes fail the job at once with
  the reason: a poisonous input is not sent round the whole network.
- Metering: ``inference_seconds`` of an execution is the coordinator's own wall time from
  dispatch to answer, in billed seconds (every started second counts). Nodes claim the
  seconds of their executions (``{exec: seconds}``) in their receipts.
- Spot checks: a ``spot_check_rate`` sample of done jobs is run again on another capable
  node and the outputs compared (``meshcast.inference.outputs_agree``). On a mismatch a
  third node breaks the tie and the execution in the minority is marked so (the job's
  result becomes the majority's); without a third node, or when all three differ, both
  are ``disputed``. Neither a minority nor a disputed execution is paid.

Jobs and executions live in the coordinator's SQLite database, so an origin restart
re-queues the jobs that were running. Dispatch runs as asyncio tasks (at most
``inference_concurrency`` executions in flight), database work in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from meshcast.http import BodyTooLarge, error_reason, json_error, read_body
from meshcast.inference import (
    MAX_OUTPUT,
    MAX_REQUEST,
    Candidate,
    JobRejected,
    JobSpec,
    Order,
    billed_seconds,
    exec_id,
    parse_job_request,
    parse_result,
    rank,
    valid_job_id,
    verdict,
)
from meshcast.rewards import inference_verified
from meshcast.signing import SignatureError, verify_object
from origin.access_api import ApiError, Principal

if TYPE_CHECKING:  # the coordinator imports this module: no cycle at run time
    from origin.coordinator import Coordinator, EpochEvidence, Line, NodeRecord

log = logging.getLogger(__name__)

NODE_PATH: Final = "/_network/inference"
# Faults that say something about the input, not the node: two of them fail the job.
INPUT_FAULTS: Final = ("input", "crash")
INPUT_FAULT_LIMIT: Final = 2
# A busy node (503, its plugin queue full) is neither blamed nor asked again for a moment;
# a job that meets only busy nodes this many times fails.
BUSY_COOL_DOWN: Final = 1.0
BUSY_LIMIT: Final = 30

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS inference_jobs (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, path TEXT NOT NULL,
  state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, node TEXT, exec TEXT,
  output TEXT, output_hash TEXT, seconds INTEGER, reason TEXT,
  spot_check TEXT NOT NULL DEFAULT 'none', spot_reason TEXT);
CREATE INDEX IF NOT EXISTS inference_jobs_state ON inference_jobs (state, spot_check);
CREATE TABLE IF NOT EXISTS inference_execs (
  exec TEXT PRIMARY KEY, job TEXT NOT NULL, n INTEGER NOT NULL, purpose TEXT NOT NULL,
  node TEXT NOT NULL, url TEXT NOT NULL, state TEXT NOT NULL, started REAL NOT NULL,
  ended REAL, error TEXT, fault TEXT, output TEXT, output_hash TEXT, wall REAL,
  metered INTEGER, verdict TEXT);
CREATE INDEX IF NOT EXISTS inference_execs_job ON inference_execs (job);
"""
_EXEC_COLUMNS: Final = (
    "exec",
    "job",
    "n",
    "purpose",
    "node",
    "url",
    "state",
    "started",
    "ended",
    "error",
    "fault",
    "output",
    "output_hash",
    "wall",
    "metered",
    "verdict",
)
_JOB_COLUMNS: Final = (
    "id",
    "owner",
    "model",
    "path",
    "state",
    "created",
    "updated",
    "node",
    "exec",
    "output",
    "output_hash",
    "seconds",
    "reason",
    "spot_check",
    "spot_reason",
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one execution came to: ``output`` on success, else ``error`` and ``fault``
    (``transport`` | ``busy`` | ``node`` | ``protocol`` | ``input`` | ``crash``)."""

    wall: float
    output: Any = None
    output_hash: str | None = None
    error: str | None = None
    fault: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Work:
    job: str
    spec: JobSpec
    purpose: str  # run | check | tiebreak
    created: float
    exclude: frozenset[str]  # nodes this execution must not go to
    failed: int  # failed executions of this purpose
    last_error: str | None


class Marketplace:
    def __init__(self, coordinator: Coordinator, rng: random.Random | None = None) -> None:
        self.c = coordinator
        self.config = coordinator.config
        self.rng = rng or random.Random()
        with self.c._lock:
            self.c.db.executescript(SCHEMA)
        self._tasks: dict[str, asyncio.Task[None]] = {}  # job -> its execution in flight
        self._running: dict[str, int] = {}  # node -> executions in flight
        self._busy_until: dict[str, float] = {}  # node -> monotonic end of its cool-down
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    # ---- the database (in threads: an epoch close holds the lock for a while) ------------

    def _rows(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.c._lock:
            return self.c.db.execute(query, args).fetchall()

    def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        with self.c._lock:
            self.c.db.execute("BEGIN")
            try:
                for query, args in statements:
                    self.c.db.execute(query, args)
                self.c.db.execute("COMMIT")
            except BaseException:
                self.c.db.execute("ROLLBACK")
                raise

    def _job(self, job: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM inference_jobs WHERE id = ?", (job,))
        return dict(zip(_JOB_COLUMNS, rows[0], strict=True)) if rows else None

    def _execs(self, job: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM inference_execs WHERE job = ? ORDER BY n", (job,))
        return [dict(zip(_EXEC_COLUMNS, r, strict=True)) for r in rows]

    # ---- API ------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, owner: str) -> dict[str, Any]:
        now = self.c.clock()
        job = f"j{secrets.token_hex(8)}"
        with self.c._lock:
            ((waiting,),) = self._rows(
                "SELECT COUNT(*) FROM inference_jobs WHERE state IN ('queued', 'running')"
            )
            if waiting >= self.config.inference_max_queued:
                raise JobRejected(429, f"{waiting} jobs are waiting; retry later")
            self._write(
                (
                    "INSERT INTO inference_jobs (id, owner, model, path, state, created, "
                    "updated) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                    (job, owner, spec.model, spec.path, now, now),
                )
            )
        log.info("inference: job %s (%s %s) queued for %s", job, spec.model, spec.path, owner)
        self._poke()
        doc = self.job_json(job)
        assert doc is not None
        return doc

    def job_json(self, job: str) -> dict[str, Any] | None:
        row = self._job(job)
        if row is None:
            return None
        execs = self._execs(job)

        def attempt(e: dict[str, Any]) -> dict[str, Any]:
            return {
                "exec": e["exec"],
                "n": e["n"],
                "purpose": e["purpose"],
                "node": e["node"],
                "url": e["url"],
                "state": e["state"],
                "error": e["error"],
                "fault": e["fault"],
                "started": e["started"],
                "ended": e["ended"],
                "inference_seconds": e["metered"],
                "verdict": e["verdict"],
            }

        runs = [attempt(e) for e in execs if e["purpose"] == "run"]
        checks = [attempt(e) for e in execs if e["purpose"] != "run"]
        return {
            "id": job,
            "owner": row["owner"],
            "model": row["model"],
            "input": {"path": row["path"]},
            "state": row["state"],
            "created": row["created"],
            "updated": row["updated"],
            "node": row["node"],
            "exec": row["exec"],
            "attempts": runs,
            "result": json.loads(row["output"]) if row["output"] is not None else None,
            "output_hash": row["output_hash"],
            "inference_seconds": row["seconds"],
            "reason": row["reason"],
            "spot_check": {
                "state": row["spot_check"],
                "reason": row["spot_reason"],
                "executions": checks,
            },
        }

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._client = httpx.AsyncClient(follow_redirects=False)
        self._main = asyncio.create_task(self.run(), name="inference dispatcher")

    def _poke(self) -> None:
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nothing to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    async def close(self) -> None:
        """Stop dispatching; executions in flight are cancelled and, being recorded as
        running, re-queued by the next start."""
        tasks = [t for t in (self._main, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
        self._loop = None

    def recover(self) -> int:
        """After a restart: executions left running are lost; their jobs queue again."""
        now = self.c.clock()
        with self.c._lock:
            lost = self._rows("SELECT exec FROM inference_execs WHERE state = 'running'")
            self._write(
                (
                    "UPDATE inference_execs SET state = 'failed', ended = ?, fault = 'restart', "
                    "error = 'the coordinator restarted during the execution' "
                    "WHERE state = 'running'",
                    (now,),
                ),
                (
                    "UPDATE inference_jobs SET state = 'queued', node = NULL, updated = ? "
                    "WHERE state = 'running'",
                    (now,),
                ),
            )
        if lost:
            log.warning("inference: %d executions lost in a restart re-queued", len(lost))
        return len(lost)

    async def run(self) -> None:
        assert self._wake is not None
        await asyncio.to_thread(self.recover)
        while True:
            self._wake.clear()
            try:
                await self.schedule()
            except Exception:
                log.exception("inference: scheduling failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()

    # ---- scheduling -----------------------------------------------------------------------

    def _work(self) -> list[Work]:
        rows = self._rows(
            "SELECT id, model, path, state, spot_check, created, node FROM inference_jobs "
            "WHERE state = 'queued' OR spot_check IN ('pending', 'tiebreak') ORDER BY created"
        )
        out = []
        for job, model, path, state, spot, created, node in rows:
            if job in self._tasks:
                continue
            purpose = "run" if state == "queued" else ("check" if spot == "pending" else "tiebreak")
            execs = self._execs(job)
            done = {e["node"] for e in execs if e["state"] == "done"}
            failed = [
                e
                for e in execs
                if e["purpose"] == purpose
                and e["state"] == "failed"
                and e["fault"] not in ("restart", "busy")
            ]
            exclude = {e["node"] for e in failed}
            if purpose != "run":
                exclude |= done | ({node} if node else set())
            out.append(
                Work(
                    job,
                    JobSpec(model, path),
                    purpose,
                    created,
                    frozenset(exclude),
                    len(failed),
                    failed[-1]["error"] if failed else None,
                )
            )
        return out

    def live_nodes(self) -> list[NodeRecord]:
        now = self.c.clock()
        return [n for n in self.c.nodes() if n.live(now, self.config.node_ttl)]

    async def schedule(self) -> None:
        if len(self._tasks) >= self.config.inference_concurrency:
            return
        work = await asyncio.to_thread(self._work)
        if not work:
            return
        nodes = await asyncio.to_thread(self.live_nodes)
        ring = [n.url for n in nodes]
        for item in work:
            if len(self._tasks) >= self.config.inference_concurrency:
                break
            capable = [
                n for n in nodes if set(item.spec.plugins) <= set(n.capacity.get("plugins") or [])
            ]
            eligible = [n for n in capable if n.node not in item.exclude]
            now = time.monotonic()
            free = [
                n
                for n in eligible
                if self._running.get(n.node, 0) < self.config.inference_per_node
                and self._busy_until.get(n.node, 0.0) <= now
            ]
            if not free:
                if not eligible:
                    await asyncio.to_thread(self._unplaceable, item, len(capable))
                continue
            candidates = [
                Candidate(
                    n.node,
                    n.url,
                    int(n.capacity.get("cpus") or 1),
                    bool(n.capacity.get("gpu")),
                    self._running.get(n.node, 0),
                )
                for n in free
            ]
            best = rank(candidates, ring, item.spec.path, item.job)[0]
            node = next(n for n in free if n.node == best.node)
            self._running[node.node] = self._running.get(node.node, 0) + 1
            task = asyncio.create_task(self._execute(item, node), name=f"inference {item.job}")
            self._tasks[item.job] = task
            task.add_done_callback(functools.partial(self._finished, item.job, node.node))

    def _finished(self, job: str, node: str, _: object = None) -> None:
        self._tasks.pop(job, None)
        self._running[node] = max(0, self._running.get(node, 0) - 1)
        self._poke()

    def _unplaceable(self, item: Work, capable: int) -> None:
        """No node may take ``item``: every capable node failed it, or none is live."""
        now = self.c.clock()
        plugin = " and ".join(item.spec.plugins) + (" plugins" if item.spec.cid else " plugin")
        if item.purpose == "run":
            if capable and item.failed:
                reason = f"failed on every capable node ({item.failed}); last: {item.last_error}"
            elif now - item.created > self.config.inference_queue_timeout:
                reason = f"no live node runs the {plugin}"
            else:
                return  # wait for one to join
            self._fail(item.job, reason)
        elif item.purpose == "check":
            self._set_spot(item.job, "skipped", f"no other live node runs the {plugin}")
        else:
            self._dispute(item.job, "no third capable node to break the tie")

    # ---- one execution --------------------------------------------------------------------

    async def _execute(self, item: Work, node: NodeRecord) -> None:
        try:
            await self._execute_once(item, node)
        except Exception:
            # Recorded as running: the next start re-queues it; meanwhile say why.
            log.exception("inference: %s on %s: recording failed", item.job, node.url)

    async def _execute_once(self, item: Work, node: NodeRecord) -> None:
        order = await asyncio.to_thread(self._begin, item, node)
        outcome = await self._dispatch(order, node)
        if outcome.fault == "busy":
            # Its plugin queue is full (its own live work counts too): leave it be a moment.
            self._busy_until[node.node] = time.monotonic() + BUSY_COOL_DOWN
        log.log(
            logging.INFO if outcome.ok else logging.WARNING,
            "inference: %s (%s) on %s: %s in %.2f s",
            order.exec,
            item.purpose,
            node.url,
            "done" if outcome.ok else outcome.error,
            outcome.wall,
        )
        await asyncio.to_thread(self._end, item, order, outcome)

    def _begin(self, item: Work, node: NodeRecord) -> Order:
        """Record the execution as running (an origin restart finds it so) and name it."""
        now = self.c.clock()
        with self.c._lock:
            ((n,),) = self._rows("SELECT COUNT(*) FROM inference_execs WHERE job = ?", (item.job,))
            order = Order(item.job, exec_id(item.job, n + 1), node.node, item.spec, now)
            statements: list[tuple[str, tuple[Any, ...]]] = [
                (
                    "INSERT INTO inference_execs (exec, job, n, purpose, node, url, state, "
                    "started) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                    (order.exec, item.job, n + 1, item.purpose, node.node, node.url, now),
                )
            ]
            if item.purpose == "run":
                statements.append(
                    (
                        "UPDATE inference_jobs SET state = 'running', node = ?, exec = ?, "
                        "updated = ? WHERE id = ?",
                        (node.node, order.exec, now, item.job),
                    )
                )
            self._write(*statements)
        return order

    async def _dispatch(self, order: Order, node: NodeRecord) -> Outcome:
        assert self._client is not None
        body = order.body()
        envelope = {"body": body, "sig": self.c.key.sign_object(body)}
        t0 = time.monotonic()
        timeout = self.config.inference_timeout
        try:
            r = await self._client.post(node.url + NODE_PATH, json=envelope, timeout=timeout)
        except httpx.TimeoutException:
            return Outcome(
                time.monotonic() - t0, error=f"no answer within {timeout:.0f} s", fault="transport"
            )
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Outcome(
                time.monotonic() - t0, error=f"connection lost ({detail})", fault="transport"
            )
        wall = time.monotonic() - t0
        if r.status_code != 200:
            reason = error_reason(r.content)
            fault = "node"
            if r.status_code == 422:
                fault = "input"
            elif r.status_code == 503 and _field(r, "busy"):
                fault = "busy"
            elif r.status_code == 500 and _field(r, "crashed"):
                fault = "crash"
            return Outcome(wall, error=f"node answered {r.status_code}: {reason}", fault=fault)
        try:
            if len(r.content) > MAX_OUTPUT:
                raise JobRejected(400, f"result over {MAX_OUTPUT} bytes")
            answer = r.json()
            if not isinstance(answer, dict) or not isinstance(answer.get("sig"), str):
                raise JobRejected(400, "result is not a signed envelope")
            verify_object(node.pubkey, answer.get("body"), answer["sig"])
            result = parse_result(answer.get("body"), order)
        except (ValueError, SignatureError, JobRejected) as exc:
            return Outcome(wall, error=f"bad result: {exc}", fault="protocol")
        return Outcome(wall, output=result.output, output_hash=result.output_hash)

    def _end(self, item: Work, order: Order, outcome: Outcome) -> None:
        now = self.c.clock()
        metered = billed_seconds(outcome.wall) if outcome.ok else None
        output = json.dumps(outcome.output) if outcome.ok else None
        with self.c._lock:
            self._write(
                (
                    "UPDATE inference_execs SET state = ?, ended = ?, error = ?, fault = ?, "
                    "output = ?, output_hash = ?, wall = ?, metered = ? WHERE exec = ?",
                    (
                        "done" if outcome.ok else "failed",
                        now,
                        outcome.error,
                        outcome.fault,
                        output,
                        outcome.output_hash,
                        outcome.wall,
                        metered,
                        order.exec,
                    ),
                )
            )
            if item.purpose == "run":
                self._end_run(item, order, outcome, metered, output)
            elif outcome.ok:
                self._compare(item.job)
            elif outcome.fault != "busy" and item.failed + 1 >= self.config.inference_attempts:
                what = "re-execution" if item.purpose == "check" else "tie-break"
                if item.purpose == "check":
                    self._set_spot(item.job, "skipped", f"{what} failed: {outcome.error}")
                else:
                    self._dispute(item.job, f"{what} failed: {outcome.error}")

    def _end_run(
        self, item: Work, order: Order, outcome: Outcome, metered: int | None, output: str | None
    ) -> None:
        now = self.c.clock()
        if outcome.ok:
            spot = "pending" if self.rng.random() < self.config.spot_check_rate else "none"
            self._write(
                (
                    "UPDATE inference_jobs SET state = 'done', node = ?, exec = ?, output = ?, "
                    "output_hash = ?, seconds = ?, updated = ?, spot_check = ? WHERE id = ?",
                    (
                        order.node,
                        order.exec,
                        output,
                        outcome.output_hash,
                        metered,
                        now,
                        spot,
                        item.job,
                    ),
                )
            )
            return
        execs = [e for e in self._execs(item.job) if e["purpose"] == "run"]
        faults = [e for e in execs if e["fault"] in INPUT_FAULTS]
        tries = [
            e for e in execs if e["state"] == "failed" and e["fault"] not in ("restart", "busy")
        ]
        busy = [e for e in execs if e["fault"] == "busy"]
        if len({e["node"] for e in faults}) >= INPUT_FAULT_LIMIT:
            what = "crashed the inference worker" if outcome.fault == "crash" else "was refused"
            self._fail(item.job, f"input {what} on {len(faults)} nodes: {outcome.error}")
        elif len(tries) >= self.config.inference_attempts:
            self._fail(item.job, f"{len(tries)} executions failed; last: {outcome.error}")
        elif len(busy) >= BUSY_LIMIT:
            self._fail(item.job, f"every capable node stayed busy ({len(busy)} tries)")
        else:
            self._write(
                (
                    "UPDATE inference_jobs SET state = 'queued', node = NULL, updated = ? "
                    "WHERE id = ?",
                    (now, item.job),
                )
            )

    def _fail(self, job: str, reason: str) -> None:
        log.warning("inference: job %s failed: %s", job, reason)
        self._write(
            (
                "UPDATE inference_jobs SET state = 'failed', node = NULL, reason = ?, "
                "updated = ? WHERE id = ?",
                (reason, self.c.clock(), job),
            )
        )

    def _set_spot(self, job: str, state: str, reason: str | None) -> None:
        self._write(
            (
                "UPDATE inference_jobs SET spot_check = ?, spot_reason = ?, updated = ? "
                "WHERE id = ?",
                (state, reason, self.c.clock(), job),
            )
        )

    def _verdicts(self, marks: dict[str, str]) -> None:
        self._write(
            *(
                ("UPDATE inference_execs SET verdict = ? WHERE exec = ?", (v, e))
                for e, v in marks.items()
            )
        )

    def _dispute(self, job: str, reason: str) -> None:
        row = self._job(job)
        done = [e for e in self._execs(job) if e["state"] == "done"]
        assert row is not None
        log.warning("inference: job %s disputed: %s", job, reason)
        self._verdicts({e["exec"]: "disputed" for e in done})
        self._set_spot(job, "disputed", reason)

    def _compare(self, job: str) -> None:
        """A check or tie-break finished: compare the done executions of ``job``."""
        row = self._job(job)
        assert row is not None
        done = {e["purpose"]: e for e in self._execs(job) if e["state"] == "done"}
        run, check, third = done.get("run"), done.get("check"), done.get("tiebreak")
        if run is None or check is None or run["exec"] != row["exec"]:
            return
        outputs = [json.loads(e["output"]) if e else None for e in (run, check, third)]
        outcome = verdict(row["model"], outputs[0], outputs[1], outputs[2])
        if outcome == "passed":
            self._verdicts({run["exec"]: "agreed", check["exec"]: "agreed"})
            self._set_spot(job, "passed", f"{check['node']} agrees")
        elif outcome == "disputed" and third is None:
            log.warning(
                "inference: job %s: %s and %s disagree; breaking the tie",
                job,
                run["node"],
                check["node"],
            )
            self._set_spot(job, "tiebreak", f"{run['node']} and {check['node']} disagree")
        elif outcome == "original_failed":
            assert third is not None
            self._verdicts(
                {run["exec"]: "minority", check["exec"]: "agreed", third["exec"]: "agreed"}
            )
            reason = f"{run['node']} disagrees with {check['node']} and {third['node']}"
            log.warning("inference: job %s spot check failed: %s", job, reason)
            self._write(
                (
                    "UPDATE inference_jobs SET output = ?, output_hash = ? WHERE id = ?",
                    (check["output"], check["output_hash"], job),
                )
            )
            self._set_spot(job, "failed", reason)
        elif outcome == "check_failed":
            assert third is not None
            self._verdicts(
                {run["exec"]: "agreed", check["exec"]: "minority", third["exec"]: "agreed"}
            )
            reason = f"{third['node']} agrees; the re-execution on {check['node']} does not"
            self._set_spot(job, "passed", reason)
        else:
            self._dispute(job, "three executions, three different outputs")


def _field(response: httpx.Response, name: str) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and bool(body.get(name))


# ---- verification at epoch close --------------------------------------------------------


class InferenceVerifier:
    """Per node: the seconds it claims for executions against the coordinator's records.

    ``evidence`` sums the coordinator-metered seconds of the claimed executions that the
    coordinator saw this node complete, that no earlier receipt (of this or an earlier
    epoch) claimed, and that no spot check put in the minority or disputed. Flags:
    ``unknown_job`` (no such completed execution by this node: never ran it, ran another
    node's, or its answer never arrived), ``already_counted``, ``spot_check_failed``,
    ``disputed``, ``inflated`` (more seconds than metered). ``passed``/``checks`` count the
    spot checks decided on the claimed executions. An execution whose spot check is still
    under way when the epoch closes is paid (checks take seconds, the close grace a minute);
    one checked later no longer changes a closed epoch."""

    kind = "inference"

    def verify(self, ev: EpochEvidence) -> list[Line]:
        from origin.coordinator import Line

        # (the tables exist: the coordinator's Marketplace created them)
        lines = []
        for (node, kind, stream), claimed in sorted(ev.claims.items()):
            if kind != self.kind:
                continue
            before = self._claimed_before(ev, node)
            seen: set[str] = set()
            flags: set[str] = set()
            evidence = passed = checks = 0
            for receipt in ev.receipts:
                if receipt.node != node:
                    continue
                for execution in receipt.inference_seconds:
                    if execution in before or execution in seen:
                        flags.add("already_counted")
                        continue
                    seen.add(execution)
                    row = ev.db.execute(
                        "SELECT node, state, metered, verdict FROM inference_execs WHERE exec = ?",
                        (execution,),
                    ).fetchone()
                    if row is None or row[0] != node or row[1] != "done":
                        flags.add("unknown_job")
                        continue
                    metered, mark = int(row[2] or 0), row[3]
                    if mark in ("agreed", "minority"):
                        checks += 1
                    if mark == "minority":
                        flags.add("spot_check_failed")
                    elif mark == "disputed":
                        flags.add("disputed")
                    else:
                        passed += mark == "agreed"
                        evidence += metered
            verified = inference_verified(claimed, evidence, passed, checks, ev.params.tolerance)
            if verified < claimed and not flags:
                flags.add("inflated")
            lines.append(
                Line(
                    node,
                    kind,
                    stream,
                    claimed,
                    evidence,
                    0,
                    verified,
                    flags=tuple(sorted(flags)),
                    passed=passed,
                    checks=checks,
                )
            )
        return lines

    @staticmethod
    def _claimed_before(ev: EpochEvidence, node: str) -> set[str]:
        """Executions claimed by the node's counted receipts of earlier epochs."""
        out: set[str] = set()
        for (body,) in ev.db.execute(
            "SELECT body FROM receipts WHERE node = ? AND epoch < ? AND late = 0 "
            "AND body NOT LIKE '%\"inference_seconds\":{}%'",
            (node, ev.epoch),
        ):
            out |= set(json.loads(body).get("inference_seconds", {}))
        return out


# ---- HTTP ---------------------------------------------------------------------------------


def inference_routes(
    market: Marketplace, principal: Callable[[Request], Principal]
) -> list[BaseRoute]:
    def who(request: Request) -> Principal | Response:
        try:
            return principal(request)
        except ApiError as exc:
            response = json_error(exc.status, str(exc), **exc.extra)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response

    async def submit(request: Request) -> Response:
        caller = who(request)
        if isinstance(caller, Response):
            return caller
        try:
            raw = await read_body(request, MAX_REQUEST)
        except BodyTooLarge as exc:
            return json_error(413, str(exc))
        except TimeoutError:
            return json_error(400, "request body not received in time")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return json_error(400, "body is not JSON")
        try:
            spec = parse_job_request(body)
            job = await asyncio.to_thread(market.submit, spec, caller.owner)
        except JobRejected as exc:
            return json_error(exc.code, exc.reason)
        location = {"Location": f"/api/inference/{job['id']}"}
        return JSONResponse(job, status_code=202, headers=location)

    async def get(request: Request) -> Response:
        caller = who(request)
        if isinstance(caller, Response):
            return caller
        job = request.path_params["job"]
        doc = await asyncio.to_thread(market.job_json, job) if valid_job_id(job) else None
        if doc is None or not caller.may_manage(doc["owner"]):
            return json_error(404, f"unknown inference job {job[:40]!r}")
        return JSONResponse(doc)

    return [
        Route("/api/inference", submit, methods=["POST"]),
        Route("/api/inference/{job}", get, methods=["GET"]),
    ]
