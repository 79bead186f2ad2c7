"""Edge plugins: code that runs in the layer that delivers the video (captions, moderation,
storage), enabled per edge with ``--plugin NAME``.

A plugin is any object with the :class:`EdgePlugin` shape. Optional hooks, looked up by
name so a plugin only defines what it needs:

- ``check(path) -> Response | None``: a request filter run before the cache *and* on the
  FastPath (a moderation ``block`` answers 451 here). Must be cheap: it runs per request.
- ``serve(path, from_peer) -> Response | None``: answer a media path the plugin produces
  itself (the captions owner serves its WebVTT objects).
- ``upstream(path) -> str | None``: the base URL to fill a media path from instead of the
  usual owner-peer-then-origin (captions come from the stream's owner edge only).
- ``transform(path, body) -> bytes``: rewrite a manifest before it is cached and served
  (captions add their track to ``master.m3u8`` and the MPD). Must be idempotent: a peer
  may hand us a copy it already rewrote.

Plugins are found through the ``meshcast.plugins`` entry-point group, with a built-in table
for the plugins shipped here (an installed copy of meshcast elsewhere may carry stale entry
points). Unknown names fail at startup with :class:`UnknownPlugin`.

Options come from ``--plugin-option PLUGIN.KEY=VALUE`` (repeatable; a repeated key keeps
every value), parsed once into :class:`PluginOptions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from starlette.responses import Response
from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from edge.app import Edge

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "meshcast.plugins"
# Plugins shipped in this repository (also declared as entry points in pyproject.toml).
BUILTIN: Final[dict[str, str]] = {
    "captions": "edge.plugins.captions:CaptionsPlugin",
    "moderation": "edge.plugins.moderation:ModerationPlugin",
}
# Registered at run time (tests register their deliberately slow plugin here).
_REGISTERED: dict[str, Callable[[PluginContext], EdgePlugin]] = {}


class UnknownPlugin(Exception):
    pass


class PluginOptionError(ValueError):
    pass


@runtime_checkable
class EdgePlugin(Protocol):
    name: str

    def routes(self) -> list[BaseRoute]: ...

    async def start(self, edge: Edge) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """``PLUGIN.KEY=VALUE`` strings, by plugin then key (every value of a repeated key)."""

    values: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Sequence[str]) -> PluginOptions:
        values: dict[str, dict[str, list[str]]] = {}
        for item in items:
            head, sep, value = item.partition("=")
            plugin, dot, key = head.partition(".")
            if not sep or not dot or not plugin or not key:
                raise PluginOptionError(f"plugin option {item!r} is not PLUGIN.KEY=VALUE")
            values.setdefault(plugin, {}).setdefault(key, []).append(value)
        return cls(values)

    def for_plugin(self, plugin: str) -> dict[str, list[str]]:
        return self.values.get(plugin, {})


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What a plugin gets at construction (before the edge exists)."""

    options: dict[str, list[str]]

    def get(self, key: str, default: str) -> str:
        values = self.options.get(key)
        return values[-1] if values else default

    def number(self, key: str, default: float) -> float:
        raw = self.get(key, "")
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError as exc:
            raise PluginOptionError(f"option {key}={raw!r} is not a number") from exc

    def all(self, key: str) -> list[str]:
        return list(self.options.get(key, ()))


def register(name: str, factory: Callable[[PluginContext], EdgePlugin]) -> None:
    _REGISTERED[name] = factory


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def available() -> dict[str, str]:
    """Plugin name -> "module:Class" (entry points override the built-in table)."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def load(name: str, context: PluginContext) -> EdgePlugin:
    factory = _REGISTERED.get(name)
    if factory is None:
        target = available().get(name)
        if target is None:
            known = ", ".join(sorted({*available(), *_REGISTERED}))
            raise UnknownPlugin(f"unknown edge plugin {name!r} (available: {known})")
        module_name, _, attr = target.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
    plugin = factory(context)
    if not isinstance(plugin, EdgePlugin):
        raise UnknownPlugin(f"edge plugin {name!r} does not have the EdgePlugin shape")
    return plugin


class PluginHost:
    """The plugins of one edge and the hooks the request path calls."""

    def __init__(self, names: Sequence[str], options: Sequence[str] = ()) -> None:
        parsed = PluginOptions.parse(options)
        unused = set(parsed.values) - set(names)
        if unused:
            raise PluginOptionError(f"options for plugins not enabled: {', '.join(sorted(unused))}")
        self.plugins: list[EdgePlugin] = [
            load(name, PluginContext(parsed.for_plugin(name))) for name in dict.fromkeys(names)
        ]
        self.filters: list[Callable[[str], Response | None]] = self._hooks("check")
        self._servers: list[Callable[[str, bool], Response | None]] = self._hooks("serve")
        self._upstreams: list[Callable[[str], str | None]] = self._hooks("upstream")
        self._transforms: list[Callable[[str, bytes], bytes]] = self._hooks("transform")
        self.live: frozenset[str] = frozenset()  # live stream names, from the origin
        self._edge: Edge | None = None
        self._poll: asyncio.Task[None] | None = None

    def _hooks(self, name: str) -> list[Any]:
        return [getattr(p, name) for p in self.plugins if callable(getattr(p, name, None))]

    def routes(self) -> list[BaseRoute]:
        return [route for plugin in self.plugins for route in plugin.routes()]

    # ---- hooks on the request path ------------------------------------------------------

    def check(self, path: str) -> Response | None:
        for hook in self.filters:
            if (response := hook(path)) is not None:
                return response
        return None

    def serve(self, path: str, from_peer: bool) -> Response | None:
        for hook in self._servers:
            if (response := hook(path, from_peer)) is not None:
                return response
        return None

    def upstream(self, path: str) -> str | None:
        for hook in self._upstreams:
            if (base := hook(path)) is not None:
                return base
        return None

    def transforms(self, path: str) -> bool:
        return bool(self._transforms) and path.endswith(("/master.m3u8", "/manifest.mpd"))

    def transform(self, path: str, body: bytes) -> bytes:
        for hook in self._transforms:
            body = hook(path, body)
        return body

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self, edge: Edge, poll_s: float = 1.0) -> None:
        self._edge = edge
        if self.plugins:
            self._poll = asyncio.create_task(self._poll_streams(edge, poll_s))
        for plugin in self.plugins:
            await plugin.start(edge)

    async def _poll_streams(self, edge: Edge, poll_s: float) -> None:
        """Which streams are live: the origin's listing (works with or without a bus)."""
        while True:
            try:
                response = await edge.client.get(f"{edge.origin}/api/streams", timeout=2.0)
                if response.status_code == 200:
                    streams = response.json().get("streams", [])
                    self.live = frozenset(
                        s["name"] for s in streams if s.get("state") == "live" and "name" in s
                    )
            except Exception as exc:  # an origin restart must not end the plugins
                log.debug("edge plugins: stream listing failed: %s", exc)
            await asyncio.sleep(poll_s)

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        for plugin in reversed(self.plugins):
            try:
                await plugin.close()
            except Exception:
                log.exception("edge plugin %s failed to close", plugin.name)
