"""The plugin host: what an edge offers the plugins it runs (:class:`EdgeHost`) and what a
plugin offers back (:class:`EdgePlugin`).

A plugin is constructed with the host before the edge's app is built and sees the edge
only through this protocol: the fill path (``fetch``), the cache as objects
(``cached``/``store``/``forget``) and the edge's way of answering with one (``respond``),
the peer ring, the HTTP client, the bus, the configuration and the metrics registry. The
edge's own state (fills in flight, cache tiers, the FastPath) stays private to
``edge/app.py``, so a plugin cannot break the request path it is hosted on
(``tests/unit/test_plugins.py`` checks this statically).

This module imports nothing of ``edge/app.py``: the edge implements the protocol
structurally, and ``edge/app.py`` imports the plugin package, never the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import httpx
    from prometheus_client import CollectorRegistry
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from edge.cache import CachedObject
    from edge.metering import UsageMeter
    from edge.plugins.options import PluginContext
    from edge.ring import PeerRing
    from meshcast.config import EdgeConfig
    from meshcast.events import EventBus


@dataclass(slots=True)
class NetworkMembership:
    """This edge's membership in a contributor network, once it joined: served at
    ``/api/network`` (players learn the coordinator for their beacons there), and read by
    the routes that take orders from the coordinator (storage challenges, inference)."""

    node: str
    coordinator: str
    # Learnt from the registration answer: coordinator orders must carry its signature.
    coordinator_key: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"node": self.node, "coordinator": self.coordinator}
        if self.coordinator_key is not None:
            out["coordinator_key"] = self.coordinator_key
        return out


@runtime_checkable
class EdgePlugin(Protocol):
    """Constructed with the host (before the edge's app is built); ``routes()`` are mounted
    ahead of the media catch-all; ``start``/``close`` run with the edge's HTTP service.
    Optional request-path hooks are listed in ``edge/plugins/__init__.py``."""

    name: str

    def routes(self) -> list[BaseRoute]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class EdgeHost(Protocol):
    """What a plugin may use of the edge it runs on."""

    @property
    def config(self) -> EdgeConfig:
        """The edge's configuration (read-only)."""
        ...

    @property
    def self_url(self) -> str:
        """This edge's URL as its peers and the ring know it."""
        ...

    @property
    def origin(self) -> str:
        """The origin's base URL now (it may be re-pointed at run time: read it per use)."""
        ...

    @property
    def client(self) -> httpx.AsyncClient:
        """The edge's shared HTTP client (peers, origin, coordinator)."""
        ...

    @property
    def ring(self) -> PeerRing:
        """The peer ring: owners of keys, live peers."""
        ...

    @property
    def bus(self) -> EventBus | None:
        """The event bus (``--bus``), None without one."""
        ...

    @property
    def registry(self) -> CollectorRegistry:
        """The edge's metrics registry (served at ``/metrics``)."""
        ...

    @property
    def meter(self) -> UsageMeter:
        """Bytes served and fetched per stream (the usage receipts' source)."""
        ...

    @property
    def plugins(self) -> Sequence[EdgePlugin]:
        """Every plugin of this edge (complete once all were constructed)."""
        ...

    # Set once the edge joined a contributor network (edge/network.py).
    network: NetworkMembership | None

    def options(self, plugin: str) -> PluginContext:
        """The ``--plugin-option`` values given for ``plugin``."""
        ...

    async def fetch(
        self, key: str, refresh: bool = False, token: str | None = None
    ) -> bytes | None:
        """The body of media path ``key`` through the cache and the normal fill path; None
        when upstream has no such object. ``token`` goes upstream with a new fill."""
        ...

    def cached(self, key: str) -> CachedObject | None:
        """The cached object at ``key`` (counts as an access for the eviction policy)."""
        ...

    def store(self, obj: CachedObject) -> None:
        """Cache a complete object the plugin produced or verified itself."""
        ...

    def forget(self, key: str) -> None:
        """Drop ``key`` from every cache tier."""
        ...

    def respond(self, request: Request, obj: CachedObject, label: str) -> Response:
        """Answer ``request`` with a cached object as the edge does (ranges, validators,
        ``X-Cache: label``, metrics, access log)."""
        ...

    async def admits(self, kind: str, name: str, token: str | None) -> bool:
        """Whether the edge's access control lets ``token`` read ``/KIND/NAME/…``."""
        ...

    def add_routes(self, routes: Iterable[BaseRoute]) -> None:
        """Mount more routes ahead of the media catch-all (before the app is built)."""
        ...
