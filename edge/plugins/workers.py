"""Inference in worker processes behind a bounded queue: a plugin submits, and when the
queue is full the job is skipped and counted, never waited for. Delivery runs on the event
loop; a plugin can only ever make itself late, not the viewers.

Each pool is a spawn-context ``ProcessPoolExecutor``: heavy models load once per worker
process (the initializer), and nothing from the edge's event loop is forked into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from meshcast.lifeline import worker_pool

if TYPE_CHECKING:
    from edge.plugins.assets import OwnedAssets
    from edge.plugins.live import OwnedStreams

log = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")


@dataclass
class PluginMetrics:
    registry: CollectorRegistry
    jobs: Counter = field(init=False)
    skipped: Counter = field(init=False)
    failed: Counter = field(init=False)
    seconds: Histogram = field(init=False)
    cpu_seconds: Counter = field(init=False)
    queue_depth: Gauge = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        label = ("plugin",)
        self.jobs = Counter("meshcast_edge_plugin_jobs", "Inference jobs done", label, registry=r)
        self.skipped = Counter(
            "meshcast_edge_plugin_skipped",
            "Inference jobs skipped because the plugin's queue was full",
            label,
            registry=r,
        )
        self.failed = Counter(
            "meshcast_edge_plugin_failed", "Inference jobs that raised", label, registry=r
        )
        self.seconds = Histogram(
            "meshcast_edge_plugin_inference_seconds",
            "Wall time of one inference job in its worker process",
            label,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
            registry=r,
        )
        self.cpu_seconds = Counter(
            "meshcast_edge_plugin_cpu_seconds",
            "CPU time of inference jobs in worker processes",
            label,
            registry=r,
        )
        self.queue_depth = Gauge(
            "meshcast_edge_plugin_queue_depth",
            "Jobs queued or running per plugin",
            label,
            registry=r,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, PluginMetrics] = weakref.WeakKeyDictionary()


def plugin_metrics(registry: CollectorRegistry) -> PluginMetrics:
    """One set of plugin metrics per registry (every plugin of an edge shares it)."""
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = PluginMetrics(registry)
    return metrics


@dataclass(frozen=True, slots=True)
class Timed:
    value: Any
    wall: float
    cpu: float


def _noop() -> None:
    pass


def _timed(fn: Callable[..., Any], args: tuple[Any, ...]) -> Timed:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args)
    return Timed(value, time.perf_counter() - wall, time.process_time() - cpu)


class InferencePool:
    def __init__(
        self,
        plugin: str,
        metrics: PluginMetrics,
        *,
        workers: int = 1,
        queue: int = 2,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.plugin = plugin
        self.limit = max(1, queue)
        self._workers = workers
        self._initializer = initializer
        self._initargs = initargs
        self._pool: ProcessPoolExecutor | None = None
        self._inflight = 0
        self._jobs = metrics.jobs.labels(plugin)
        self._skipped = metrics.skipped.labels(plugin)
        self._failed = metrics.failed.labels(plugin)
        self._seconds = metrics.seconds.labels(plugin)
        self._cpu = metrics.cpu_seconds.labels(plugin)
        self._depth = metrics.queue_depth.labels(plugin)
        self._depth.set(0)
        self._freed = asyncio.Event()  # set whenever a job finishes

    @property
    def inflight(self) -> int:
        return self._inflight

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = worker_pool(self._workers, self._initializer, self._initargs)
        return self._pool

    def warm(self) -> None:
        """Start the workers now (the initializer loads the model) instead of on the first
        segment: a model loading while a stream's first segments arrive would skip them."""
        pool = self._executor()
        for _ in range(self._workers):
            pool.submit(_noop)

    def skip(self, count: int = 1) -> None:
        """Count work the plugin dropped itself (e.g. a backlog beyond its delay bound)."""
        self._skipped.inc(count)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[Timed] | None:
        """Queue ``fn(*args)`` in a worker; None (skipped, counted) when the queue is full."""
        if self._inflight >= self.limit:
            self._skipped.inc()
            return None
        try:
            future: Future[Timed] = self._executor().submit(_timed, fn, args)
        except BrokenProcessPool:
            self._replace_broken()
            future = self._executor().submit(_timed, fn, args)
        self._inflight += 1
        self._depth.set(self._inflight)
        wrapped = asyncio.wrap_future(future)
        wrapped.add_done_callback(self._done)
        return wrapped

    async def submit_when_free(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[Timed]:
        """Queue ``fn(*args)`` once a slot is free, never skipped: for work done once (a VOD
        asset) that must not leave holes; live jobs compete for the same slots meanwhile."""
        while True:
            if self._inflight < self.limit:
                future = self.submit(fn, *args)
                if future is not None:
                    return future
            self._freed.clear()
            await self._freed.wait()

    def _done(self, future: asyncio.Future[Timed]) -> None:
        self._inflight -= 1
        self._depth.set(self._inflight)
        self._freed.set()
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:
            self._failed.inc()
            log.warning("edge plugin %s: inference failed: %r", self.plugin, exc)
            if isinstance(exc, BrokenProcessPool):
                self._replace_broken()
            return
        timed = future.result()
        self._jobs.inc()
        self._seconds.observe(timed.wall)
        self._cpu.inc(timed.cpu)

    def _replace_broken(self) -> None:
        """A worker process died (an input crashed it, or it was killed): the executor is
        unusable from then on, so the next job starts a fresh one (loading the model
        again) instead of every later job failing."""
        broken, self._pool = self._pool, None
        if broken is not None:
            log.error("edge plugin %s: a worker process died; starting new ones", self.plugin)
            broken.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            # In a thread: a running job (one inference at most) finishes off the loop.
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


class ModelPlugin(Generic[V]):
    """What the plugins that run a model share (captions, moderation): the worker pool,
    the live streams they own, their VOD jobs (values ``V``) and background tasks, and
    closing all of it in order (tasks, then streams, then VOD jobs, then the pool)."""

    vod: OwnedAssets[V]

    def __init__(self) -> None:
        self._pool: InferencePool | None = None
        self._owned: OwnedStreams | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pool(self) -> InferencePool | None:
        """The worker pool, once started: marketplace jobs run here too (edge/inference.py)."""
        return self._pool

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owned is not None:
            await self._owned.close()
        await self.vod.close()
        if self._pool is not None:
            await self._pool.close()
