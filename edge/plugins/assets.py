"""VOD assets as seen by a plugin: one job per asset, on first demand, at the asset's owner.

The peer ring's rendezvous owner of ``vod:ASSET`` runs the asset's job (captions, a
moderation scan) once for the whole mesh. A viewer's request on any other edge nudges the
owner (an HTTP request the owner takes as demand), at most once per ``nudge_s`` per asset.
The job reads the asset with the token that admitted the request that caused it (token-only
assets). Results stay in memory, at most ``keep`` assets (least recently asked for evicted
first: redone on the next demand); a failed job is not retried before ``retry_s``.

Live streams have the same shape with a different trigger: ``live.OwnedStreams``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeVar

from edge.plugins.host import EdgeHost

log = logging.getLogger(__name__)

T = TypeVar("T")
# Bounds on what this edge remembers per asset it did not (successfully) handle: forgetting
# an entry only costs one more nudge or one earlier retry.
MAX_REMEMBERED: Final = 10_000


def vod_key(asset: str) -> str:
    return f"vod:{asset}"


@dataclass(slots=True)
class AssetJob(Generic[T]):
    """One asset's job and what it produced so far (``value``, filled in by the job)."""

    value: T
    state: Literal["running", "done", "failed"] = "running"
    error: str | None = None
    finished_at: float = 0.0


class OwnedAssets(Generic[T]):
    """Runs ``work(asset, value, token)`` once per VOD asset this edge owns, on demand.

    ``new()`` makes the value a job fills in (visible through :meth:`get` while it runs);
    ``work`` raises when the asset cannot be handled (yet). Elsewhere :meth:`demand` calls
    ``nudge(owner, asset, token)`` instead."""

    def __init__(
        self,
        host: EdgeHost,
        label: str,
        new: Callable[[], T],
        work: Callable[[str, T, str | None], Awaitable[None]],
        nudge: Callable[[str, str, str | None], Awaitable[object]],
        keep: int,
        retry_s: float,
        nudge_s: float,
    ) -> None:
        self.host = host
        self.label = label
        self._new = new
        self._work = work
        self._nudge = nudge
        self.keep = max(1, keep)
        self.retry_s = retry_s
        self.nudge_s = nudge_s
        self.jobs: OrderedDict[str, AssetJob[T]] = OrderedDict()  # running and done
        self._failed: dict[str, AssetJob[T]] = {}
        self._nudged: dict[str, float] = {}  # asset -> when this edge last nudged its owner
        self._tasks: set[asyncio.Task[None]] = set()

    def owner(self, asset: str) -> str:
        return self.host.ring.owner(vod_key(asset))

    def owns(self, asset: str) -> bool:
        return self.owner(asset) == self.host.self_url

    def get(self, asset: str) -> AssetJob[T] | None:
        """The asset's job here: running, done or failed (None: never asked, or forgotten)."""
        return self.jobs.get(asset) or self._failed.get(asset)

    def done(self, asset: str) -> T | None:
        """What the asset's finished job produced, None before (or without) one."""
        job = self.jobs.get(asset)
        return job.value if job is not None and job.state == "done" else None

    def demand(self, asset: str, token: str | None, nudge: bool = True) -> None:
        """Someone asked for ``asset``: run its job here (the owner) or, with ``nudge``,
        make its owner run it."""
        job = self.jobs.get(asset)
        if job is not None:
            self.jobs.move_to_end(asset)  # recently asked for: evicted last
            return
        failed = self._failed.get(asset)
        if failed is not None and time.time() - failed.finished_at < self.retry_s:
            return
        owner = self.owner(asset)
        if owner == self.host.self_url:
            self._start(asset, token)
        elif nudge:
            self._nudge_owner(owner, asset, token)

    def _start(self, asset: str, token: str | None) -> None:
        self._failed.pop(asset, None)
        job = self.jobs[asset] = AssetJob(self._new())
        if len(self.jobs) > self.keep:
            # The least recently asked for go first; a running job is never dropped (its
            # result would be lost and the next demand would start it again).
            done = [key for key, old in self.jobs.items() if old.state == "done"]
            for key in done[: len(self.jobs) - self.keep]:
                del self.jobs[key]
        self._spawn(self._run(asset, job, token), f"{self.label} vod {asset}")

    async def _run(self, asset: str, job: AssetJob[T], token: str | None) -> None:
        try:
            await self._work(asset, job.value, token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s of VOD %s failed: %r", self.label, asset, exc)
            job.state, job.error = "failed", str(exc) or repr(exc)
            job.finished_at = time.time()
            if self.jobs.get(asset) is job:
                del self.jobs[asset]
            if len(self._failed) > MAX_REMEMBERED:
                self._failed.clear()
            self._failed[asset] = job
            return
        job.state, job.finished_at = "done", time.time()

    def _nudge_owner(self, owner: str, asset: str, token: str | None) -> None:
        now = time.time()
        if now - self._nudged.get(asset, 0.0) < self.nudge_s:
            return
        if len(self._nudged) > MAX_REMEMBERED:
            self._nudged.clear()
        self._nudged[asset] = now
        self._spawn(self._send_nudge(owner, asset, token), f"{self.label} nudge vod {asset}")

    async def _send_nudge(self, owner: str, asset: str, token: str | None) -> None:
        try:
            await self._nudge(owner, asset, token)
        except Exception as exc:  # the next nudge or a viewer's request tries again
            log.debug("%s of VOD %s: nudging the owner failed: %r", self.label, asset, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task  # both kinds catch their own errors
