"""Edge HTTP app: two-tier cache, single-flight fills, peer ring, stale-if-error.

Request path for a media object: fresh cache entry -> HIT; a fill already running ->
COALESCED (streamed as it arrives); else start a fill from the owner peer (PEER) or the
origin (MISS). If the upstream fails, a cached copy within its grace is served as STALE.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.access import AccessControl, PolicyUnavailable
from edge.accesslog import AccessLog
from edge.cache import CachedObject, TieredCache, read_range
from edge.fill import Fill, FillError, Upstream
from edge.http_semantics import RangeNotSatisfiable, etag_matches, freshness, parse_range
from edge.metering import UsageMeter
from edge.ml_policy import DemandTracker, MlPolicy
from edge.plugins import (
    EdgePlugin,
    NetworkMembership,
    PluginContext,
    PluginHooks,
    PluginOptions,
    check_options,
    find_plugin,
)
from edge.policies import EvictionPolicy
from edge.prefetch import PrefetchConfig, Prefetcher
from edge.ring import PeerRing
from edge.trainer import BackgroundTrainer
from meshcast.config import EdgeConfig
from meshcast.events import EventBus
from meshcast.http import EXCEPTION_HANDLERS, cors, json_error
from meshcast.metrics import metrics_endpoint
from meshcast.paths import MediaPath, parse_media_path
from meshcast.tokens import (
    TOKEN_HEADER,
    TOKEN_PARAM,
    TokenError,
    rewrite_manifest,
    token_from_query,
)
from meshcast.viewers import ViewerCounter, is_viewing, viewer_id

log = logging.getLogger(__name__)

PEER_HEADER: Final = "X-Meshcast-Peer"
# Non-media paths an edge forwards (player and studio assets, landing page): plain, safe
# characters.
_PASSTHROUGH = re.compile(r"/(?:(?:player|studio)/[A-Za-z0-9._/-]*)?")
_FORWARD_HEADERS: Final = ("content-type", "etag", "last-modified", "cache-control")


def advertised_url(config: EdgeConfig) -> str:
    """The edge's URL as its peers, the ring and the bus know it."""
    return (config.advertise or f"http://{config.host}:{config.port}").rstrip("/")


@dataclass
class EdgeMetrics:
    registry: CollectorRegistry
    requests: Counter = field(init=False)
    origin_fetches: Counter = field(init=False)
    peer_fetches: Counter = field(init=False)
    bytes_served: Counter = field(init=False)
    upstream_bytes: Counter = field(init=False)
    fill_seconds: Histogram = field(init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "meshcast_edge_requests", "Edge requests by cache result", ["cache"], registry=r
        )
        self.origin_fetches = Counter(
            "meshcast_edge_origin_fetches", "Fetches from the origin", registry=r
        )
        self.peer_fetches = Counter(
            "meshcast_edge_peer_fetches", "Fetches from the owner peer", registry=r
        )
        self.bytes_served = Counter(
            "meshcast_edge_served_bytes", "Body bytes sent to viewers", registry=r
        )
        self.upstream_bytes = Counter(
            "meshcast_edge_upstream_bytes",
            "Body bytes fetched upstream (prefetches included)",
            ["source"],
            registry=r,
        )
        self.fill_seconds = Histogram(
            "meshcast_edge_fill_seconds",
            "Time to fill an object from upstream",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )


class Edge:
    """State and request handling of one edge (the ASGI app is built around it); the
    :class:`~edge.plugins.EdgeHost` of its plugins."""

    def __init__(
        self,
        config: EdgeConfig,
        metrics: CollectorRegistry | None = None,
        bus: EventBus | None = None,
    ) -> None:
        self.config = config
        # Resolved first: an unknown plugin or a bad option fails before any file or
        # socket is opened.
        plugin_factories = [find_plugin(name) for name in dict.fromkeys(config.plugins)]
        self.plugin_options = PluginOptions.parse(config.plugin_options)
        check_options(self.plugin_options, config.plugins)
        self.origin = config.origin.rstrip("/")
        self.self_url = advertised_url(config)
        policy: str | Callable[[int], EvictionPolicy] = config.cache_policy
        self.demand: DemandTracker | None = None
        if config.cache_policy == "ml":
            # One demand model for both tiers, fed with every request (hits included).
            demand = self.demand = DemandTracker(retrain_every=config.ml_retrain_every)
            policy = lambda capacity: MlPolicy(capacity, demand)  # noqa: E731
        self.cache = TieredCache(
            config.cache_mem, config.cache_disk, config.cache_dir / "objects", policy
        )
        self.ring = PeerRing(self.self_url, config.peers)
        self.metrics = EdgeMetrics(metrics or CollectorRegistry())
        # Per-stream bytes for the usage receipts, counted beside bytes_served.
        self.meter = UsageMeter()
        self.metrics.registry.register(self.meter)
        self.trainer: BackgroundTrainer | None = None
        if self.demand is not None:
            self.trainer = BackgroundTrainer(
                self.demand, config.cache_dir / "models", self.metrics.registry
            )
        self.prefetcher: Prefetcher | None = None
        if config.prefetch_budget > 0:
            self.prefetcher = Prefetcher(
                PrefetchConfig(budget=config.prefetch_budget),
                self._prefetch_fill,
                lambda key: key in self._fills or self.cache.peek(key) is not None,
                lambda: len(self._fills),
                self.metrics.registry,
            )
        cache_bytes = Gauge(
            "meshcast_edge_cache_bytes",
            "Bytes held per cache tier",
            ["tier"],
            registry=self.metrics.registry,
        )
        cache_bytes.labels("memory").set_function(lambda: self.cache.memory.used)
        cache_bytes.labels("disk").set_function(lambda: self.cache.disk.used)
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            follow_redirects=False,
        )
        self.access_log = AccessLog(config.cache_dir / "access.csv")
        # The origin is read at each fetch: it may be re-pointed at run time.
        self.access = AccessControl(
            lambda: self.origin, self.client, self.metrics.registry, config.access_policy_ttl
        )
        self._fills: dict[str, Fill] = {}
        # Live viewers seen here, reported to the origin (EdgeService, meshcast/viewers.py).
        self.viewers = ViewerCounter()
        # With --bus: plugins publish their events (moderation.flagged).
        self.bus = bus
        # Once this edge joined a network (edge/network.py): players read it to know where
        # to send their beacons.
        self.network: NetworkMembership | None = None
        # Routes added through add_routes() (the network membership's inference executor).
        self._routes: list[BaseRoute] = []
        self._mounted = False
        # Last: plugins may use anything above (ring, cache, client, metrics).
        self.plugins: list[EdgePlugin] = []
        self.plugins.extend(factory(self) for factory in plugin_factories)
        self.hooks = PluginHooks(self.plugins)

    # ---- the plugin host (edge/plugins/host.py) ----------------------------------------

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def options(self, plugin: str) -> PluginContext:
        return self.plugin_options.context(plugin)

    def cached(self, key: str) -> CachedObject | None:
        return self.cache.get(key)

    def store(self, obj: CachedObject) -> None:
        self.cache.put(obj)

    def forget(self, key: str) -> None:
        self.cache.invalidate(key)

    async def admits(self, kind: str, name: str, token: str | None) -> bool:
        try:
            await self.access.check(kind, name, token)
        except (TokenError, PolicyUnavailable):
            return False
        return True

    def add_routes(self, routes: Iterable[BaseRoute]) -> None:
        if self._mounted:
            raise RuntimeError("routes must be added before the edge's app is built")
        self._routes.extend(routes)

    def routes(self) -> list[BaseRoute]:
        """The added routes and every plugin's, in that order (mounted once)."""
        self._mounted = True
        return [*self._routes, *(route for plugin in self.plugins for route in plugin.routes())]

    # ---- entry point ------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if len(path) + len(request.url.query) > self.config.max_url:
            return json_error(414, "URL too long")
        media = parse_media_path(path)
        if media is None and (not _PASSTHROUGH.fullmatch(path) or ".." in path):
            return json_error(404, "not found", path=path)
        token: str | None = None
        if media is not None and self.config.access_control:
            token = token_from_query(request.url.query) or request.headers.get(TOKEN_HEADER)
            try:
                claims = await self.access.check(media.kind, media.name, token)
            except TokenError as exc:
                return json_error(exc.status, str(exc), reason=exc.reason, path=path)
            except PolicyUnavailable as exc:
                return json_error(503, str(exc), reason="policy_unavailable", path=path)
            if claims is None:
                token = None  # public: nothing to forward or rewrite
        if media is not None and is_viewing(media) and PEER_HEADER not in request.headers:
            client = request.client.host if request.client else "-"
            agent = request.headers.get("user-agent", "")
            self.viewers.seen(media.name, viewer_id(token, client, agent), time.time())
        if (
            token is not None
            and media is not None
            and media.is_manifest
            and PEER_HEADER not in request.headers  # a peer caches it and rewrites itself
        ):
            # Rewritten per viewer: always the whole manifest (players send "Range: bytes=0-"
            # and validators that would select a partial or cached, unrewritten body).
            plain = Request({**request.scope, "headers": _without_validators(request)})
            return await _with_token(await self._serve(plain, path, media, token), path, token)
        return await self._serve(request, path, media, token)

    async def _serve(
        self, request: Request, path: str, media: MediaPath | None, token: str | None
    ) -> Response:
        from_peer = PEER_HEADER in request.headers
        key = path  # never the query: every viewer of an object shares one cache entry
        if media is not None and self.plugins:
            self.hooks.demand(path, token, from_peer)
            answer = self.hooks.check(path) or self.hooks.serve(path, from_peer)
            if answer is not None:
                return answer
        now = time.time()
        cached = self.cache.get(key)
        if media is not None:
            self.observe(key, cached.size if cached is not None else 0, from_peer)
        if cached is not None and cached.fresh(now):
            return self.respond(request, cached, "HIT")
        fill = self._fills.get(key)
        label = "COALESCED"
        if fill is None:
            fill = self._start_fill(key, from_peer, token)
            label = ""
        return await self._from_fill(request, fill, label, cached)

    def forget_manifests(self, prefix: str) -> None:
        for tier in (self.cache.memory, self.cache.disk):
            for key in [k for k in tier.entries if k.startswith(prefix)]:
                media = parse_media_path(key)
                if media is not None and media.is_manifest:
                    self.cache.invalidate(key)

    def observe(self, key: str, size: int, from_peer: bool) -> None:
        """A request for a media object: demand model input and prefetch trigger."""
        if self.demand is not None:
            self.demand.observe(key, size, time.time())
        if self.prefetcher is not None and not from_peer:
            self.prefetcher.on_request(key, size)

    async def fetch(
        self, key: str, refresh: bool = False, token: str | None = None
    ) -> bytes | None:
        """The body of ``key`` through the cache and the normal fill path (for plugins);
        None when upstream has no such object. ``token`` goes upstream with a new fill (a
        plugin working on a token-only asset for the viewer who asked for it)."""
        cached = self.cache.peek(key)
        if cached is not None and cached.fresh(time.time()) and not refresh:
            if cached.body is not None:
                return cached.body
            return b"".join([chunk async for chunk in read_range(cached, 0, cached.size)])
        fill = self._fills.get(key) or self._start_fill(key, from_peer=False, token=token)
        await fill.wait_done_quietly()
        if fill.error is not None or fill.status != 200:
            return None
        body = fill.body
        return self.hooks.transform(key, body) if self.hooks.transforms(key) else body

    async def _prefetch_fill(self, key: str, refresh: bool) -> int | None:
        """Bring ``key`` into the cache (or refresh it) like a viewer's miss would."""
        cached = self.cache.peek(key)
        if cached is not None and cached.fresh(time.time()) and not refresh:
            return cached.size
        fill = self._fills.get(key) or self._start_fill(key, from_peer=False)
        await fill.wait_done_quietly()
        if fill.error is not None or fill.status != 200:
            return None
        return fill.received

    # ---- fills ------------------------------------------------------------------------

    def _upstreams(self, key: str, from_peer: bool) -> list[Upstream]:
        origin = Upstream(self.origin, False)
        if (produced_by := self.hooks.upstream(key)) is not None:
            # Objects a plugin produces exist only on the edge that made them.
            return [Upstream(produced_by, True)] if produced_by != self.self_url else []
        if from_peer:
            return [origin]  # a peer already chose us as owner: never bounce further
        owner = self.ring.owner(key)
        if owner == self.self_url:
            return [origin]
        return [Upstream(owner, True), origin]

    def _start_fill(self, key: str, from_peer: bool, token: str | None = None) -> Fill:
        fill = Fill(key)
        self._fills[key] = fill
        headers = {PEER_HEADER: self.self_url}
        if token is not None:
            # The upstream (origin or owner peer) checks it too; a header, so it stays out
            # of upstream URLs and their logs.
            headers[TOKEN_HEADER] = token
        upstreams = self._upstreams(key, from_peer)

        async def run() -> None:
            try:
                await fill.run(self.client, upstreams, headers, self._upstream_failed)
                self._store(fill)
            finally:
                self._fills.pop(key, None)
                self.metrics.fill_seconds.observe(time.monotonic() - fill.started)

        fill.task = asyncio.get_running_loop().create_task(run(), name=f"fill {key}")
        return fill

    def _upstream_failed(self, upstream: Upstream, reason: str) -> None:
        if upstream.is_peer:
            self.ring.mark_down(upstream.base_url, reason)
        else:
            log.warning("edge %s: origin fetch failed: %s", self.self_url, reason)

    def _store(self, fill: Fill) -> None:
        if fill.error is not None or fill.status != 200 or fill.source is None:
            return
        (self.metrics.peer_fetches if fill.source.is_peer else self.metrics.origin_fetches).inc()
        self.metrics.upstream_bytes.labels("peer" if fill.source.is_peer else "origin").inc(
            fill.received
        )
        self.meter.fetched(fill.key, fill.received)
        media = parse_media_path(fill.key)
        fresh = freshness(
            fill.headers.get("cache-control"),
            immutable_default=media is not None and not media.is_manifest,
            default_ttl=3600.0 if media is not None and media.kind == "vod" else 1.0,
        )
        if not fresh.store:
            return
        body = fill.body
        if self.hooks.transforms(fill.key):
            body = self.hooks.transform(fill.key, body)
        now = time.time()
        self.cache.put(
            CachedObject(
                key=fill.key,
                size=len(body),
                content_type=fill.headers.get("content-type", "application/octet-stream"),
                etag=fill.headers.get("etag"),
                last_modified=fill.headers.get("last-modified"),
                stored_at=now,
                expires_at=None if fresh.ttl is None else now + fresh.ttl,
                body=body,
            )
        )
        if self.prefetcher is not None and fill.key.endswith("/index.m3u8"):
            self.prefetcher.on_playlist(fill.key, fill.body)

    async def _from_fill(
        self, request: Request, fill: Fill, label: str, stale: CachedObject | None
    ) -> Response:
        try:
            await fill.wait_headers()
        except FillError as exc:
            return self._stale_or_error(request, stale, exc)
        assert fill.source is not None and fill.status is not None
        if not label:
            label = "MISS"
            if fill.source.is_peer:
                # A peer serving its stale copy is still stale for our viewer.
                label = "STALE" if fill.headers.get("x-cache") == "STALE" else "PEER"
        if fill.status != 200:
            await fill.wait_done_quietly()
            self.metrics.requests.labels(label).inc()
            if fill.status == 404:
                return json_error(404, "not found", path=fill.key)
            return Response(fill.body, fill.status, headers=self._headers(fill.headers, label))
        wants_range = "range" in request.headers or "if-none-match" in request.headers
        if self.hooks.transforms(fill.key):
            # A rewritten manifest is served whole, as cached: same bytes on every path.
            try:
                await fill.wait_done()
            except FillError as exc:
                return self._stale_or_error(request, stale, exc)
            cached = self.cache.get(fill.key)
            if cached is None:
                rewritten = self.hooks.transform(fill.key, fill.body)
                headers = self._headers(fill.headers, label)
                headers["content-length"] = str(len(rewritten))
                self.metrics.requests.labels(label).inc()
                return Response(rewritten, 200, headers=headers)
            return self.respond(request, cached, label)
        if wants_range:
            # Ranges and validators are answered from the complete object.
            try:
                await fill.wait_done()
            except FillError as exc:
                return self._stale_or_error(request, stale, exc)
            cached = self.cache.get(fill.key)
            if cached is not None:
                return self.respond(request, cached, label)
        self.metrics.requests.labels(label).inc()
        headers = self._headers(fill.headers, label)
        size = fill.headers.get("content-length")
        self.access_log.write_request(request, int(size) if size else fill.received)

        peer = request.headers.get(PEER_HEADER)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in fill.stream():
                self.metrics.bytes_served.inc(len(chunk))
                self.meter.served(fill.key, len(chunk), peer)
                yield chunk

        return StreamingResponse(body(), 200, headers=headers)

    def _stale_or_error(
        self, request: Request, stale: CachedObject | None, exc: FillError
    ) -> Response:
        if stale is not None and self._stale_allowed(stale):
            return self.respond(request, stale, "STALE")
        self.metrics.requests.labels("ERROR").inc()
        return json_error(exc.status, str(exc), path=request.url.path)

    def _stale_allowed(self, obj: CachedObject) -> bool:
        if obj.expires_at is None:
            return True
        return time.time() - obj.expires_at <= self.config.stale_grace

    # ---- responses --------------------------------------------------------------------

    def _headers(self, upstream: dict[str, str], label: str) -> dict[str, str]:
        headers = {k: v for k, v in upstream.items() if k in _FORWARD_HEADERS}
        if "content-length" in upstream:
            headers["content-length"] = upstream["content-length"]
        headers["X-Cache"] = label
        return headers

    def respond(self, request: Request, obj: CachedObject, label: str) -> Response:
        """Answer with a cached object: validators, ranges, ``X-Cache``, metrics, log."""
        self.metrics.requests.labels(label).inc()
        headers = {"Content-Type": obj.content_type, "X-Cache": label, "Age": str(obj.age)}
        headers["Accept-Ranges"] = "bytes"
        if obj.etag:
            headers["ETag"] = obj.etag
        if obj.last_modified:
            headers["Last-Modified"] = obj.last_modified
        if obj.expires_at is None:
            headers["Cache-Control"] = "public, max-age=31536000, immutable"
        else:
            headers["Cache-Control"] = (
                f"public, max-age={max(0, int(obj.expires_at - time.time()))}"
            )
        if etag_matches(request.headers.get("if-none-match"), obj.etag):
            self.access_log.write_request(request, 0)
            return Response(status_code=304, headers=headers)
        try:
            span = parse_range(request.headers.get("range"), obj.size)
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{obj.size}"
            return json_error(416, "range not satisfiable", size=obj.size)
        start, end = span if span is not None else (0, obj.size)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{obj.size}"
        headers["Content-Length"] = str(end - start)
        # HEAD sends no body: counting it would make receipts claim bytes never sent
        # (the fast path already counts 0 for HEAD).
        sent = 0 if request.method == "HEAD" else end - start
        self.metrics.bytes_served.inc(sent)
        self.meter.served(obj.key, sent, request.headers.get(PEER_HEADER))
        self.access_log.write_request(request, sent)
        if obj.body is not None:
            return Response(obj.body[start:end], status, headers=headers)
        return StreamingResponse(read_range(obj, start, end), status, headers=headers)

    async def close(self) -> None:
        if self.prefetcher is not None:
            await self.prefetcher.close()
        if self.trainer is not None:
            await self.trainer.close()
        for fill in list(self._fills.values()):
            if fill.task is not None:
                fill.task.cancel()
        await self.access.close()
        await self.cache.close()
        await self.client.aclose()
        self.access_log.close()


def _without_validators(request: Request) -> list[tuple[bytes, bytes]]:
    drop = (b"range", b"if-none-match", b"if-range", b"if-modified-since")
    return [(k, v) for k, v in request.scope["headers"] if k not in drop]


async def _with_token(response: Response, path: str, token: str) -> Response:
    """A token-protected playlist/MPD with ``?token=`` on every child URI (players do not
    carry the master's query to children). Rewritten per response from the shared cached
    object, so the cache stays keyed by path."""
    if response.status_code != 200:
        return response
    if isinstance(response, StreamingResponse):
        chunks = [
            chunk if isinstance(chunk, bytes) else str(chunk).encode()
            async for chunk in response.body_iterator
        ]
        body = b"".join(chunks)
    else:
        body = bytes(response.body)
    rewritten = rewrite_manifest(path, body, token)
    headers = {
        k: v
        for k, v in response.headers.items()
        if k not in ("content-length", "etag", "content-range", "accept-ranges")
    }
    # Carries a viewer's credential: no shared cache may keep it.
    headers["cache-control"] = "private, no-store"
    return Response(rewritten, 200, headers=headers)


class FastPath:
    """Serves fresh in-memory HITs straight over ASGI, without routing, a Request object or
    middleware: the hot path of a CDN. Everything else goes to the Starlette app."""

    def __init__(self, edge: Edge, app: ASGIApp) -> None:
        self.edge = edge
        self.app = app
        self._hits = edge.metrics.requests.labels("HIT")
        self._observing = edge.demand is not None or edge.prefetcher is not None
        self._check = edge.config.access_control
        self._filters = edge.hooks.filters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            obj = self.edge.cache.memory.entries.get(scope["path"])
            if (
                obj is not None
                and obj.body is not None
                and obj.expires_at is None
                and (not self._check or self._allowed(scope))
            ):
                if self._filters and (refused := self.edge.hooks.check(obj.key)) is not None:
                    await refused(scope, receive, send)
                    return
                cors = False
                peer: bytes | None = None
                for name, value in scope["headers"]:
                    if name in (b"range", b"if-none-match", b"if-range"):
                        break  # validators and ranges take the full path
                    if name == b"origin":
                        cors = True
                    elif name == _PEER_HEADER_RAW:
                        peer = value
                else:
                    await self._hit(scope, send, obj, cors, peer)
                    if self._observing:
                        self.edge.observe(obj.key, obj.size, peer is not None)
                    return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        """Access check from cached state only; anything unsure takes the full path."""
        parts = scope["path"].split("/", 3)  # "", kind, name, rest
        if len(parts) != 4:
            return False
        query: bytes = scope.get("query_string", b"")
        token = token_from_query(query.decode("latin-1")) if _TOKEN_RAW in query else None
        return self.edge.access.fast_allow(parts[1], parts[2], token)

    async def _hit(
        self, scope: Scope, send: Send, obj: CachedObject, cors: bool, peer: bytes | None
    ) -> None:
        self.edge.cache.memory.policy.accessed(obj.key)
        headers = obj.hit_headers
        if headers is None:
            headers = obj.hit_headers = [
                (b"content-type", obj.content_type.encode()),
                (b"content-length", str(obj.size).encode()),
                (b"cache-control", b"public, max-age=31536000, immutable"),
                (b"accept-ranges", b"bytes"),
                (b"x-cache", b"HIT"),
                *([(b"etag", obj.etag.encode())] if obj.etag else []),
                *([(b"last-modified", obj.last_modified.encode())] if obj.last_modified else []),
            ]
        extra = [(b"age", str(obj.age).encode())]
        if cors:
            extra += _CORS_HEADERS
        await send({"type": "http.response.start", "status": 200, "headers": headers + extra})
        body = (obj.body or b"") if scope["method"] == "GET" else b""
        await send({"type": "http.response.body", "body": body})
        self._hits.inc()
        self.edge.metrics.bytes_served.inc(len(body))
        self.edge.meter.served(obj.key, len(body), peer.decode("latin-1") if peer else None)
        client = scope.get("client")
        self.edge.access_log.write(client[0] if client else "-", scope["path"], len(body))


_PEER_HEADER_RAW: Final = PEER_HEADER.lower().encode()
_TOKEN_RAW: Final = TOKEN_PARAM.encode()
_CORS_HEADERS: Final = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"X-Cache, Age, Content-Length, Content-Range, ETag"),
]


def create_app(edge: Edge) -> ASGIApp:
    async def healthz(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "role": "edge",
                "origin": edge.origin,
                "peers_alive": edge.ring.alive_peers(),
            }
        )

    async def network(request: Request) -> Response:
        if edge.network is None:
            return json_error(404, "this edge has not joined a contributor network")
        return JSONResponse(edge.network.to_json(), headers={"Cache-Control": "no-store"})

    async def studio_config(request: Request) -> Response:
        # The studio signs in and calls the API on the origin, never through an edge: an
        # API key is a creator's secret, and community edges are strangers.
        return JSONResponse({"api": edge.origin}, headers={"Cache-Control": "no-store"})

    handler: Callable[[Request], Awaitable[Response]] = edge.handle
    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/studio/config.json", studio_config),
        Route("/studio", lambda request: RedirectResponse("/studio/", 307)),
        Route("/api/network", network),
        Route("/metrics", metrics_endpoint(edge.metrics.registry)),
        *edge.routes(),
        Route("/{path:path}", handler, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, middleware=[cors()])
    return FastPath(edge, app)
