"""The ``storage`` edge plugin: S3 API, pinning and the replication background jobs."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.routing import BaseRoute

from edge.plugins.host import EdgeHost
from edge.plugins.storage.blobs import BlobStore
from edge.plugins.storage.cluster import Cluster, StorageMetrics, peer_secret
from edge.plugins.storage.pins import Pins
from edge.plugins.storage.proofs import Prover
from edge.plugins.storage.s3api import S3Api
from meshcast.keys import KeyStore


class StoragePlugin:
    name = "storage"

    def __init__(self, edge: EdgeHost) -> None:
        self.config = edge.config.storage
        self.store = BlobStore(edge.config.cache_dir / "storage")
        keys = KeyStore(edge.config.data_dir)
        self.cluster = Cluster(
            self.store,
            edge.ring,
            edge.client,
            peer_secret(edge.config.data_dir),
            self.config.replicas,
            StorageMetrics(edge.registry),
            self.config.chunk_cache,
        )
        self.s3 = S3Api(self.cluster, keys, self.config)
        self.pins = Pins(edge, self.cluster, keys, self.config)
        self.prover = Prover(self.store, edge)
        self._tasks: list[asyncio.Task[None]] = []

    def routes(self) -> list[BaseRoute]:
        return [
            *self.cluster.routes(),
            *self.s3.routes(),
            *self.pins.routes(),
            *self.prover.routes(),
        ]

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self.cluster.loop(
                    self.config.repair_interval, self.cluster.repair_once, on_membership_change=True
                )
            ),
            asyncio.create_task(
                self.cluster.loop(self.config.scrub_interval, self.cluster.scrub_once)
            ),
            asyncio.create_task(
                self.cluster.loop(
                    self.config.gc_interval, lambda: self.cluster.gc_once(self.config.gc_grace)
                )
            ),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
