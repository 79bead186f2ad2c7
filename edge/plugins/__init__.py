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

What a plugin may use of its edge is the :class:`EdgeHost` protocol (``host.py``); its
options come from ``host.options(name)`` (``options.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Final, Protocol

from starlette.responses import Response

from edge.plugins.host import EdgeHost, EdgePlugin, NetworkMembership
from edge.plugins.options import (
    PluginContext,
    PluginOptionError,
    PluginOptions,
    check_options,
)

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "EdgeHost",
    "EdgePlugin",
    "NetworkMembership",
    "PluginContext",
    "PluginFactory",
    "PluginHooks",
    "PluginOptionError",
    "PluginOptions",
    "UnknownPlugin",
    "check_options",
    "find_plugin",
    "register",
    "unregister",
]

ENTRY_POINT_GROUP: Final = "meshcast.plugins"
BUILTIN: Final = {
    "storage": "edge.plugins.storage:StoragePlugin",
    "captions": "edge.plugins.captions:CaptionsPlugin",
    "moderation": "edge.plugins.moderation:ModerationPlugin",
}


class UnknownPlugin(Exception):
    pass


class PluginFactory(Protocol):
    def __call__(self, host: EdgeHost, /) -> EdgePlugin: ...


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
