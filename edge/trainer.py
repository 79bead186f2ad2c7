"""Refits the edge's demand model in a worker process: the event loop only hands over the
labelled samples and swaps the fitted model in when it comes back."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge.ml_policy import DemandModel, DemandTracker, fit_model, load_latest_model
from meshcast.lifeline import worker_pool

log = logging.getLogger(__name__)


class BackgroundTrainer:
    def __init__(self, tracker: DemandTracker, model_dir: Path, registry: CollectorRegistry):
        self.tracker = tracker
        self.model_dir = model_dir
        self._pool: ProcessPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.refits = Counter(
            "meshcast_edge_model_refits",
            "Demand model fits by outcome",
            ["outcome"],
            registry=registry,
        )
        self.train_seconds = Histogram(
            "meshcast_edge_model_train_seconds",
            "Wall time of one demand model fit (worker process)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        version = Gauge(
            "meshcast_edge_model_version", "Version of the demand model in use (0: none)",
            registry=registry,
        )  # fmt: skip
        version.set_function(lambda: tracker.model.version if tracker.model else 0)
        inference = Gauge(
            "meshcast_edge_model_inference_seconds",
            "Mean time of one admission decision by the model",
            registry=registry,
        )
        inference.set_function(
            lambda: tracker.decision_ns / tracker.decisions / 1e9 if tracker.decisions else 0.0
        )
        tracker.trainer = self.submit
        # A restarted edge predicts at once with its last model.
        if (model := load_latest_model(model_dir)) is not None:
            tracker.model = model
            log.info("edge: loaded demand model v%d (%d samples)", model.version, model.samples)

    def submit(self, xs: np.ndarray, ys: np.ndarray, version: int) -> None:
        if self._task is not None and not self._task.done():
            self.refits.labels("skipped_busy").inc()
            return
        if self._pool is None:
            self._pool = worker_pool(1)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fit_model, xs, ys, version)
        self._task = loop.create_task(self._finish(future), name=f"fit model v{version}")

    async def _finish(self, future: asyncio.Future[DemandModel | None]) -> None:
        try:
            model = await future
        except Exception:
            log.exception("edge: demand model fit failed; keeping the previous model")
            self.refits.labels("failed").inc()
            return
        if model is None:
            self.refits.labels("one_class").inc()
            return
        self.tracker.set_model(model)
        self.refits.labels("ok").inc()
        self.train_seconds.observe(model.train_seconds)
        path = await asyncio.to_thread(model.save, self.model_dir)
        log.info(
            "edge: demand model v%d fitted on %d samples in %.2f s (%s)",
            model.version,
            model.samples,
            model.train_seconds,
            path.name,
        )

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
