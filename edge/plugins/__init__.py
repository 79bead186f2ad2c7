"""Edge plugins: extra routes and background work hosted on every edge (storage, captions,
moderation…).

A plugin is found by name in the ``meshcast.plugins`` entry-point group; plugins shipped in
this repository are also found through a built-in table, so a source checkout that was not
(re)installed still runs them. An unknown name fails the edge at start-up.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from edge.app import Edge

ENTRY_POINT_GROUP: Final = "meshcast.plugins"
BUILTIN: Final = {"storage": "edge.plugins.storage:StoragePlugin"}


class UnknownPlugin(Exception):
    pass


@runtime_checkable
class EdgePlugin(Protocol):
    """Constructed with the edge (before its app is built); ``routes()`` are mounted ahead
    of the media catch-all; ``start``/``close`` run with the edge's HTTP service. Metrics go
    on ``edge.metrics.registry``."""

    name: str

    def routes(self) -> list[BaseRoute]: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class PluginFactory(Protocol):
    def __call__(self, edge: Edge) -> EdgePlugin: ...


def find_plugin(name: str) -> PluginFactory:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            factory: PluginFactory = ep.load()
            return factory
    target = BUILTIN.get(name)
    if target is None:
        known = sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)} | set(BUILTIN))
        raise UnknownPlugin(f"unknown edge plugin {name!r} (known: {', '.join(known)})")
    module, _, attr = target.partition(":")
    loaded: PluginFactory = getattr(importlib.import_module(module), attr)
    return loaded
