"""Runs one edge: its HTTP app and the peer health checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from edge.access import KEYS_REFRESH_S
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
        self._keys: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    async def start(self) -> None:
        if self.config.access_control:
            # Token keys first, so token-protected streams play from the first request; an
            # unreachable origin is retried by the loop (public streams need no keys).
            await self.edge.access.refresh_keys()
            self._keys = asyncio.create_task(self._refresh_keys_later())
        await self.http.start()
        if self.edge.ring.peers:
            self._health = asyncio.create_task(self.edge.ring.health_loop(self.edge.client))
        if self.edge.prefetcher is not None:
            self._prefetch = asyncio.create_task(self.edge.prefetcher.run())
        log.info(
            "edge listening on %s (origin %s, peers %s, cache %d MiB memory + %d MiB disk, "
            "policy %s, prefetch %s)",
            self.url,
            self.config.origin,
            ", ".join(self.edge.ring.peers) or "none",
            self.config.cache_mem >> 20,
            self.config.cache_disk >> 20,
            self.config.cache_policy,
            f"{self.config.prefetch_budget >> 20} MiB/s" if self.config.prefetch_budget else "off",
        )

    async def _refresh_keys_later(self) -> None:
        await asyncio.sleep(KEYS_REFRESH_S)
        await self.edge.access.keys_loop()

    async def close(self) -> None:
        for task in (self._health, self._prefetch, self._keys):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.http.close()
        await self.edge.close()
