"""Runs one edge: its HTTP app, the peer health checks and, with ``--bus``, its membership
in the ring over NATS (heartbeats out, peers and stream events in); with ``--join``, its
membership in the contributor network (edge/network.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time

import httpx

from edge.access import KEYS_REFRESH_S
from edge.app import Edge, advertised_url, create_app
from edge.network import NodeAgent, load_node_key
from meshcast import events
from meshcast.bodies import UPLOAD_MIN_RATE, BodyRule
from meshcast.config import EdgeConfig
from meshcast.events import EventBus
from meshcast.http import HttpService
from meshcast.nats_bus import NatsBus
from meshcast.viewers import REPORT_INTERVAL

log = logging.getLogger(__name__)


def body_rules(config: EdgeConfig) -> list[BodyRule]:
    """The edge's large bodies: the storage plugin's uploads (streamed into chunks) and the
    chunks its peers push; everything else keeps the small default."""
    if "storage" not in config.plugins:
        return []
    storage = config.storage
    # aws-chunked framing adds ~90 bytes per chunk of at least 8 KiB: under 2 %.
    framed = storage.max_object + storage.max_object // 50 + 64 * 1024
    return [
        BodyRule("/s3/", framed, UPLOAD_MIN_RATE),
        BodyRule("/api/pins", framed, UPLOAD_MIN_RATE),
        BodyRule("/_storage/", storage.chunk_size + 1024 * 1024),
    ]


class EdgeService:
    def __init__(self, config: EdgeConfig, bus: EventBus | None = None) -> None:
        """``bus``: an event bus to use instead of ``config.bus``'s NATS connection (edges
        sharing one process and one in-process bus)."""
        self.config = config
        if bus is None and config.bus:
            bus = NatsBus(config.bus, f"edge@{advertised_url(config)}")
        self.bus = bus
        self.edge = Edge(config, bus=bus)
        self._health: asyncio.Task[None] | None = None
        self._prefetch: asyncio.Task[None] | None = None
        self._keys: asyncio.Task[None] | None = None
        self._viewers: asyncio.Task[None] | None = None
        self._bus_tasks: list[asyncio.Task[None]] = []
        self.agent: NodeAgent | None = None
        if config.join:
            self.agent = NodeAgent(
                self.edge, config, load_node_key(config.node_dir or config.cache_dir)
            )
        # After the agent: its routes (the inference executor) are part of the app.
        self.app = create_app(self.edge)
        self.http = HttpService(
            self.app,
            config.host,
            config.port,
            f"edge:{config.port}",
            config.http,
            body_rules(config),
        )

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
        if self.agent is not None:
            await self.agent.start()
        if self.edge.ring.peers or self.bus is not None or self.agent is not None:
            self._health = asyncio.create_task(self.edge.ring.health_loop(self.edge.client))
        if self.bus is not None:
            await self.bus.start()
            self._bus_tasks = [
                asyncio.create_task(self._announce(self.bus)),
                asyncio.create_task(self._listen(self.bus)),
            ]
        if self.edge.prefetcher is not None:
            self._prefetch = asyncio.create_task(self.edge.prefetcher.run())
        self._viewers = asyncio.create_task(self._report_viewers())
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

    async def _refresh_keys_later(self) -> None:
        await asyncio.sleep(KEYS_REFRESH_S)
        await self.edge.access.keys_loop()

    async def _report_viewers(self) -> None:
        """Live viewer counts to the origin every few seconds (one report per process:
        edge workers sharing a port count their own requests)."""
        instance = f"{self.edge.self_url}#{secrets.token_hex(4)}"
        reported: set[str] = set()
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            counts = self.edge.viewers.counts(time.time())
            if not counts and not reported:
                continue
            # Streams that dropped to zero are reported once as 0, then left out.
            body = {"edge": instance, "streams": {**dict.fromkeys(reported, 0), **counts}}
            reported = set(counts)
            try:
                response = await self.edge.client.post(
                    f"{self.edge.origin}/api/viewers", json=body, timeout=REPORT_INTERVAL
                )
                if response.status_code != 204:
                    log.warning("viewer report refused: %s %s", response.status_code,
                                response.text[:200])  # fmt: skip
            except httpx.HTTPError as exc:
                log.debug("viewer report failed: %s", exc)

    async def _announce(self, bus: EventBus) -> None:
        every = self.config.heartbeat
        while True:
            bus.emit(events.NodeHeartbeat("edge", self.edge.self_url))
            self.edge.ring.expire(4 * every)
            await asyncio.sleep(every)

    async def _listen(self, bus: EventBus) -> None:
        types = [events.NODE_HEARTBEAT, events.NODE_LEFT, events.STREAM_PUBLISHED,
                 events.STREAM_ENDED]  # fmt: skip
        with bus.subscribe(types) as sub:
            async for event in sub:
                url, name = event.data.get("url"), event.data.get("name")
                if event.type == events.NODE_HEARTBEAT and event.data.get("role") == "edge":
                    if isinstance(url, str):
                        self.edge.ring.heard(url)
                elif event.type == events.NODE_LEFT and isinstance(url, str):
                    self.edge.ring.left(url, "shut down")
                elif isinstance(name, str):
                    # A new publication or its end changes the playlists: drop cached
                    # copies now instead of serving them until they expire.
                    self.edge.forget_manifests(f"/live/{name}/")

    async def close(self) -> None:
        if self.bus is not None:
            self.bus.emit(events.NodeLeft("edge", self.edge.self_url))
        if self.agent is not None:
            await self.agent.close()
        for task in (*self._bus_tasks, self._health, self._prefetch, self._keys, self._viewers):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for plugin in self.edge.plugins:
            await plugin.close()
        await self.http.close()
        await self.edge.close()
        if self.bus is not None:
            await self.bus.close()
