"""Edge plugins: extra routes and background work hosted on every edge (storage, captions,
moderation…).

A plugin is found by name in the ``meshcast.plugins`` entry-point group; plugins shipped in
this repository are also found through a built-in table, so a source checkout that was not
(re)installed still runs them. An unknown name fails the edge at start-up.

Optional hooks on the request path, looked up by name so a plugin defines only what it
needs (collected by :class:`PluginHooks`):

- ``check(path) -> Response | None``: a request filter run before the cache *and* on the
  FastPath (a moderation ``block`` answers 451 here). Must be cheap: it runs per request.
- ``demand(path, token, from_peer)``: a viewer (or a peer) asked for a media path, past
  the access check, with the token that admitted it (None for public media): work done
  once per asset on first demand (VOD captions and moderation) starts here, and reads
  token-only assets with that token. Off the FastPath (immutable HITs do not call it).
- ``serve(path, from_peer) -> Response | None``: answer a media path the plugin produces
  itself (the captions owner serves its WebVTT objects).
- ``upstream(path) -> str | None``: the base URL to fill a media path from instead of the
  usual owner-peer-then-origin (captions come from the stream's owner edge only).
- ``transform(path, body) -> bytes``: rewrite a manifest before it is cached and served
  (captions add their track to ``master.m3u8`` and the MPD). Must be idempotent: a peer
  may hand us a copy it already rewrote.

Options: ``--plugin-option PLUGIN.KEY=VALUE`` (repeatable; a repeated key keeps every
value), parsed once into :class:`PluginOptions` on the edge (``edge.plugin_options``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from starlette.responses import Response
from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from edge.app import Edge

ENTRY_POINT_GROUP: Final = "meshcast.plugins"
BUILTIN: Final = {
    "storage": "edge.plugins.storage:StoragePlugin",
    "captions": "edge.plugins.captions:CaptionsPlugin",
    "moderation": "edge.plugins.moderation:ModerationPlugin",
}


class UnknownPlugin(Exception):
    pass


class PluginOptionError(ValueError):
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


# Registered at run time: tests register their deliberately slow plugin here.
_REGISTERED: dict[str, PluginFactory] = {}


def register(name: str, factory: PluginFactory) -> None:
    _REGISTERED[name] = factory


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def find_plugin(name: str) -> PluginFactory:
    if (registered := _REGISTERED.get(name)) is not None:
        return registered
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


# ---- options ------------------------------------------------------------------------------


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

    def context(self, plugin: str) -> PluginContext:
        return PluginContext(self.values.get(plugin, {}))


def check_options(options: PluginOptions, enabled: Sequence[str]) -> None:
    unused = set(options.values) - set(enabled)
    if unused:
        raise PluginOptionError(f"options for plugins not enabled: {', '.join(sorted(unused))}")


@dataclass(frozen=True, slots=True)
class PluginContext:
    """One plugin's options."""

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


# ---- request-path hooks -------------------------------------------------------------------


class PluginHooks:
    """The optional hooks of an edge's plugins, called by the request path."""

    def __init__(self, plugins: Sequence[EdgePlugin]) -> None:
        self.filters: list[Callable[[str], Response | None]] = _hooks(plugins, "check")
        self._servers: list[Callable[[str, bool], Response | None]] = _hooks(plugins, "serve")
        self._demands: list[Callable[[str, str | None, bool], None]] = _hooks(plugins, "demand")
        self._upstreams: list[Callable[[str], str | None]] = _hooks(plugins, "upstream")
        self._transforms: list[Callable[[str, bytes], bytes]] = _hooks(plugins, "transform")

    def check(self, path: str) -> Response | None:
        for hook in self.filters:
            if (response := hook(path)) is not None:
                return response
        return None

    def demand(self, path: str, token: str | None, from_peer: bool) -> None:
        for hook in self._demands:
            hook(path, token, from_peer)

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


def _hooks(plugins: Sequence[EdgePlugin], name: str) -> list[Any]:
    return [getattr(p, name) for p in plugins if callable(getattr(p, name, None))]
