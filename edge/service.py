"""Runs one edge: its HTTP app and the peer health checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from edge.app import Edge, create_app
from meshcast.config import EdgeConfig
from meshcast.http import HttpService

log = logging.getLogger(__name__)


class EdgeService:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.edge = Edge(config)
        self.app = create_app(self.edge)
        self.http = HttpService(self.app, config.host, config.port, f"edge:{config.port}")
        self._health: asyncio.Task[None] | None = None
        self._prefetch: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    async def start(self) -> None:
        await self.http.start()
        if self.edge.ring.peers:
            self._health = asyncio.create_task(self.edge.ring.health_loop(self.edge.client))
        if self.edge.prefetcher is not None:
            self._prefetch = asyncio.create_task(self.edge.prefetcher.run())
        for plugin in self.edge.plugins:
            await plugin.start()
        log.info(
            "edge listening on %s (origin %s, peers %s, cache %d MiB memory + %d MiB disk, "
            "policy %s, prefetch %s, plugins %s)",
            self.url,
            self.config.origin,
            ", ".join(self.edge.ring.peers) or "none",
            self.config.cache_mem >> 20,
            self.config.cache_disk >> 20,
            self.config.cache_policy,
            f"{self.config.prefetch_budget >> 20} MiB/s" if self.config.prefetch_budget else "off",
            ", ".join(p.name for p in self.edge.plugins) or "none",
        )

    async def close(self) -> None:
        for task in (self._health, self._prefetch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for plugin in self.edge.plugins:
            await plugin.close()
        await self.http.close()
        await self.edge.close()
