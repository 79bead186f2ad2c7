"""The node side of the inference marketplace (``origin/inference.py``): ``POST
/_network/inference`` runs one execution ordered by the coordinator.

The order must carry the coordinator's signature (its key learnt from the registration
answer at join, like storage challenges), name this node, be fresh, and not repeat an
execution already run. The input segment and its init segment come through the edge's own
cache fill (the scheduler prefers the node that owns the segment in the ring, so it is
usually a HIT); the model runs in the plugin's worker pool, never on the event loop, behind
the pool's bounded queue (full: 503, the coordinator places the job elsewhere). The answer
is a result signed with the node key. Each execution's billed seconds wait here for the
next usage receipt.

Failure answers tell the coordinator what kind of failure it was: 422 the input is missing
or the model could not use it, 500 with ``crashed`` when the worker process died on it (the
pool then starts fresh workers), 503 busy or the plugin not running.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.plugins import EdgeHost
from edge.plugins.storage.cluster import Unavailable
from edge.plugins.storage.plugin import StoragePlugin
from edge.plugins.workers import InferencePool
from meshcast.http import json_error, read_signed
from meshcast.inference import (
    MAX_OBJECT,
    MAX_REQUEST,
    MODELS,
    JobRejected,
    JobSpec,
    make_result,
    parse_order,
)
from meshcast.signing import NodeKey

log = logging.getLogger(__name__)

NODE_PATH: Final = "/_network/inference"
MAX_SEEN: Final = 100_000


def _job_function(model: str, pinned: bool) -> Callable[..., dict[str, Any]]:
    """The worker function: (init, segment) for a media segment, (content,) for a pin."""
    # Imported here: the captions model's module is only needed on edges that run it.
    if model == "moderation":
        from edge.plugins import nsfw

        return nsfw.object_job if pinned else nsfw.job
    from edge.plugins import asr

    return asr.object_job if pinned else asr.job


class InferenceExecutor:
    def __init__(self, edge: EdgeHost, key: NodeKey, max_skew: float = 30.0) -> None:
        self.edge = edge
        self.key = key
        self.max_skew = max_skew
        self._seen: OrderedDict[str, None] = OrderedDict()  # executions run (replay guard)
        self._unclaimed: dict[str, int] = {}  # execution -> billed seconds, for the receipt

    def routes(self) -> list[BaseRoute]:
        return [Route(NODE_PATH, self.handle, methods=["POST"])]

    def take_seconds(self) -> dict[str, int]:
        """The seconds of executions finished since the last receipt (for the next one)."""
        taken, self._unclaimed = self._unclaimed, {}
        return taken

    def _pool(self, model: str) -> InferencePool | None:
        plugin = MODELS[model].plugin
        for p in self.edge.plugins:
            if p.name == plugin:
                pool = getattr(p, "pool", None)
                return pool if isinstance(pool, InferencePool) else None
        return None

    async def _inputs(self, spec: JobSpec) -> tuple[bytes, ...] | Response:
        """The job's input bytes: a segment and its init segment through the edge's cache,
        or pinned content from the storage plugin (verified against its CID)."""
        if spec.cid is None:
            init = await self.edge.fetch(spec.init_path)
            segment = await self.edge.fetch(spec.path)
            if init is None or segment is None:
                return json_error(422, f"input {spec.path} (or its init segment) not found")
            return init, segment
        pins = next((p.pins for p in self.edge.plugins if isinstance(p, StoragePlugin)), None)
        if pins is None:
            return json_error(503, "the storage plugin is not running")
        try:
            content = await pins.content(spec.cid, MAX_OBJECT)
        except ValueError as exc:
            return json_error(422, f"input unusable: {exc}")
        except Unavailable as exc:
            return json_error(503, f"pinned content unavailable: {exc}")
        if content is None:
            return json_error(422, f"input {spec.cid} is not pinned")
        return (content,)

    async def handle(self, request: Request) -> Response:
        # Learnt when the node joins (edge/network.py), with the storage challenges.
        key = self.edge.network.coordinator_key if self.edge.network is not None else None
        if key is None:
            return json_error(503, "this node has not joined a coordinator yet")
        body = await read_signed(request, key, MAX_REQUEST, "order")
        if isinstance(body, Response):
            return body
        try:
            order = parse_order(body, self.key.node_id, time.time(), self.max_skew)
        except JobRejected as exc:
            return json_error(exc.code, exc.reason)
        if order.exec in self._seen:
            return json_error(409, f"execution {order.exec} was already run here")
        pool = self._pool(order.spec.model)
        if pool is None:
            return json_error(503, f"the {MODELS[order.spec.model].plugin} plugin is not running")
        self._seen[order.exec] = None
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        inputs = await self._inputs(order.spec)
        if isinstance(inputs, Response):
            return inputs
        future = pool.submit(_job_function(order.spec.model, order.spec.cid is not None), *inputs)
        if future is None:
            return json_error(503, f"the {pool.plugin} queue is full", busy=True)
        try:
            timed = await future
        except BrokenProcessPool:
            return json_error(500, "the inference worker process died on this input", crashed=True)
        except Exception as exc:
            # The model is loaded and ran: what it raised is about this input.
            return json_error(422, f"input unusable: {exc}")
        result = make_result(order, timed.value, timed.wall, time.time())
        self._unclaimed[order.exec] = result.seconds
        body = result.body()
        log.info("edge %s: inference %s (%s %s) in %.3f s", self.edge.self_url, order.exec,
                 order.spec.model, order.spec.path, timed.wall)  # fmt: skip
        return JSONResponse({"body": body, "sig": self.key.sign_object(body)})
