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

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    async def start(self) -> None:
        await self.http.start()
        if self.edge.ring.peers:
            self._health = asyncio.create_task(self.edge.ring.health_loop(self.edge.client))
        log.info(
            "edge listening on %s (origin %s, peers %s, cache %d MiB memory + %d MiB disk)",
            self.url,
            self.config.origin,
            ", ".join(self.edge.ring.peers) or "none",
            self.config.cache_mem >> 20,
            self.config.cache_disk >> 20,
        )

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        await self.http.close()
        await self.edge.close()
