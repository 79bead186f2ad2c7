"""Origin HTTP app: health, metrics, stream and VOD API, the event stream (SSE), and the
media files (live and VOD) from the segment store."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from meshcast.budgets import AddressBudget
from meshcast.events import EventBus
from meshcast.http import EXCEPTION_HANDLERS, CorsOnly, client_ip, json_error
from meshcast.metrics import metrics_endpoint
from meshcast.paths import IMMUTABLE, MUTABLE_INIT, MediaPath, parse_media_path
from meshcast.refused import Refused
from meshcast.s3store import S3Store, S3StoreError
from meshcast.store import LocalStore, SegmentStore
from meshcast.tokens import rewrite_manifest
from origin.registry import LiveStream, StreamRegistry

SSE_HEARTBEAT_S = 15.0
# Browsers call these from other origins (players, WHIP publishers); the admin API is
# server-to-server and gets no CORS headers at all.
# Browsers call these from pages on other origins: playback, publishing, and the player's
# contributor-network beacons (public endpoints; the admin APIs stay same-origin only).
CORS_PREFIXES = ("/live/", "/vod/", "/player/", "/whip/", "/api/beacons", "/api/coordinator")
PEER_HEADER = "x-meshcast-peer"
# (refusal, token for child URLs): see origin/access_api.py AccessApi.guard.
MediaGuard = Callable[[Request, MediaPath], tuple[Response | None, str | None]]
# Who may see a stream's private details (the publisher's address): a predicate over stream
# names for this request's credentials (none: nobody), or the refusal of a bad credential.
PrivateView = Callable[[Request], Callable[[str], bool] | Response]
# Fields of events and stream documents that only owners and admins see.
PRIVATE_FIELDS = frozenset({"remote"})
# Event streams (SSE) held open per client address and in all.
SSE_PER_ADDRESS = 8
SSE_TOTAL = 256


def _public_view(request: Request) -> Callable[[str], bool]:
    return lambda name: False


# Next to the packages in a checkout; MESHCAST_PLAYER_DIR where they are installed (image).
PLAYER_DIR = Path(
    os.environ.get("MESHCAST_PLAYER_DIR") or Path(__file__).resolve().parent.parent / "player-demo"
)
# URL below /player/ -> file below player-demo/ (a whitelist: nothing else is served).
PLAYER_FILES = {
    "": "index.html",
    "index.html": "index.html",
    "embed.html": "index.html",  # the same page; player.js switches to embed mode by path
    "player.js": "player.js",
    "player.css": "player.css",
    "meshcast-player.js": "meshcast-player.js",
    "publish.html": "publish.html",
    "publish.js": "publish.js",
    "vendor/hls.min.js": "node_modules/hls.js/dist/hls.min.js",
    "vendor/shaka-player.compiled.js": "node_modules/shaka-player/dist/shaka-player.compiled.js",
}
# URL below /studio/ -> file below player-demo/ (the creator studio, docs/studio.md).
STUDIO_FILES = {
    "": "studio/index.html",
    "index.html": "studio/index.html",
    "studio.js": "studio/studio.js",
    "studio.css": "studio/studio.css",
    "vendor/tus.min.js": "node_modules/tus-js-client/dist/tus.min.js",
}
PLAYER_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
PLAYER_CACHE = "public, max-age=60"
LIVE_MANIFEST_CACHE = "public, max-age=1"


@dataclass(frozen=True, slots=True)
class ListedAsset:
    """A finished VOD asset on the landing page."""

    id: str
    title: str
    duration: float | None
    recording: bool


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = round(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def landing_page(
    streams: list[LiveStream],
    viewers: Callable[[str], int] = lambda name: 0,
    assets: Sequence[ListedAsset] = (),
) -> str:
    """Live streams with their current picture and audience, then recordings and uploads
    (reloads itself: no script needed)."""
    live = []
    for s in streams:
        name = html.escape(s.name)
        state = (
            f'<span class="badge live">LIVE</span> {viewers(s.name)} watching'
            if s.live
            else '<span class="badge">ended</span>'
        )
        live.append(
            f'<li class="tile"><a href="/player/?stream={name}">'
            f'<img src="/live/{name}/poster.jpg" alt="" loading="lazy" '
            "onerror=\"this.style.visibility='hidden'\">"
            f"<b>{name}</b></a> <small>{state}</small> "
            f'<a href="/player/?stream={name}&amp;format=dash">DASH</a></li>'
        )
    items = (
        "\n".join(live)
        or "<li>No streams yet. Publish with RTMP to /live or WHIP to /whip/NAME.</li>"
    )
    vods = []
    for asset in assets:
        ident, title = html.escape(asset.id), html.escape(asset.title)
        kind = "recording" if asset.recording else "upload"
        vods.append(
            f'<li class="tile"><a href="/player/?vod={ident}">'
            f'<img src="/vod/{ident}/poster.jpg" alt="" loading="lazy" '
            "onerror=\"this.style.visibility='hidden'\">"
            f"<b>{title}</b></a> <small>{kind} {_duration(asset.duration)}</small></li>"
        )
    on_demand = "\n".join(vods) or "<li>No VOD assets yet.</li>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>meshcast</title>'
        '<meta http-equiv="refresh" content="20">'
        '<link rel="stylesheet" href="/player/player.css"><style>'
        ".tiles{list-style:none;padding:0;display:grid;gap:12px;"
        "grid-template-columns:repeat(auto-fill,minmax(240px,1fr))}"
        ".tile img{width:100%;aspect-ratio:16/9;object-fit:cover;background:#151a26;"
        "display:block}.tile a{color:inherit;text-decoration:none}"
        ".badge{font-size:11px;padding:1px 5px;border-radius:3px;background:#2a3042}"
        ".badge.live{background:#b3202a;color:#fff}</style></head><body><main>"
        '<h1>meshcast</h1><p><a href="/studio/">Creator studio</a></p>'
        f'<h2>Live</h2><ul class="tiles">{items}</ul>'
        f'<h2>On demand</h2><ul class="tiles">{on_demand}</ul></main></body></html>'
    )


def create_app(
    registry: StreamRegistry,
    bus: EventBus,
    metrics: CollectorRegistry,
    data_dir: Path,
    player_dir: Path = PLAYER_DIR,
    extra_routes: Sequence[BaseRoute] = (),
    guard: MediaGuard | None = None,
    on_peer_fetch: Callable[[str, str, int], None] | None = None,
    segment_store: S3Store | None = None,
    private_view: PrivateView = _public_view,
    event_streams: AddressBudget | None = None,
    stream_extras: Callable[[str], dict[str, object]] | None = None,
    on_live_request: Callable[[Request], None] | None = None,
    live_poster: Callable[[str], Awaitable[bytes | None]] | None = None,
    catalogue: Callable[[], Sequence[ListedAsset]] | None = None,
) -> CorsOnly:
    """``on_peer_fetch(edge_url, path, bytes)`` is told of every media response to an edge
    (one that names itself in ``X-Meshcast-Peer``): the coordinator's fetch log."""
    store = LocalStore(data_dir)

    def sent(request: Request, path: str, size: int) -> None:
        peer = request.headers.get("x-meshcast-peer")
        if peer is not None and on_peer_fetch is not None and request.method == "GET":
            on_peer_fetch(peer, path, size)

    async def vod_file(request: Request) -> Response:
        admitted = _admit(request, "vod", guard)
        if isinstance(admitted, Response):
            return admitted
        media, token = admitted
        key = f"vod/{media.name}/{media.relative}"
        # An asset never changes once its master playlist exists (ids are never reused);
        # manifests get a shorter life only so a deleted asset disappears from caches.
        cache = "public, max-age=3600" if media.is_manifest else IMMUTABLE
        rewrite = media.is_manifest and token is not None and PEER_HEADER not in request.headers
        if segment_store is not None or rewrite:
            data = await _read(segment_store or store, key, request)
            if isinstance(data, Response):
                return data
            if data is None:
                return json_error(404, "no such VOD file (yet)", path=request.url.path)
            if rewrite and token is not None:
                # A viewer straight on the origin: children carry the token (see live_file).
                data, cache = rewrite_manifest(media.relative, data, token), "private, no-store"
            sent(request, request.url.path, len(data))
            return _bytes_response(request, data, media, cache)
        path = store.path(key)
        if not path.is_file():
            return json_error(404, "no such VOD file (yet)", path=request.url.path)
        if on_peer_fetch is not None and PEER_HEADER in request.headers:
            with contextlib.suppress(OSError):
                sent(request, request.url.path, path.stat().st_size)
        return FileResponse(path, media_type=media.content_type, headers={"Cache-Control": cache})

    async def live_file(request: Request) -> Response:
        admitted = _admit(request, "live", guard)
        if isinstance(admitted, Response):
            return admitted
        media, token = admitted
        path = store.path(f"live/{media.name}/{media.relative}")
        if not path.is_file() or _previous_publication(path, media, registry.get(media.name)):
            stream = registry.get(media.name)
            reason = "stream not live" if stream is None else "not available (yet)"
            return json_error(404, reason, path=request.url.path)
        if media.is_manifest:
            # Live manifests change every segment, an ended one as soon as the name is
            # published again: edges without the event bus must see that within a second.
            cache = LIVE_MANIFEST_CACHE
            # A viewer straight on the origin: children carry the token (an edge rewrites
            # for its own viewers, from its shared cached copy).
            rewrite = token is not None and PEER_HEADER not in request.headers
            if rewrite:
                cache = "private, no-store"
            # Playlists are replaced (atomic rename) every segment: read the whole small
            # file at once, or FileResponse may send a stat()ed length of another version.
            try:
                body = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                return json_error(404, "not available (yet)", path=request.url.path)
            sent(request, request.url.path, len(body))
            if rewrite and token is not None:
                body = rewrite_manifest(media.relative, body, token)
            return Response(body, media_type=media.content_type, headers={"Cache-Control": cache})
        if on_peer_fetch is not None and "x-meshcast-peer" in request.headers:
            with contextlib.suppress(OSError):
                sent(request, request.url.path, path.stat().st_size)
        return FileResponse(
            path, media_type=media.content_type, headers={"Cache-Control": _live_media_cache(media)}
        )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "role": "origin"})

    budget = event_streams or AddressBudget("event streams", SSE_PER_ADDRESS, SSE_TOTAL)

    def stream_json(stream: LiveStream, private: bool) -> dict[str, Any]:
        body = stream.to_json(private)
        if stream_extras is not None:
            body.update(stream_extras(stream.name))  # viewers, recording
        return body

    async def list_streams(request: Request) -> Response:
        may_see = private_view(request)
        if isinstance(may_see, Response):
            return may_see
        streams = [stream_json(s, may_see(s.name)) for s in registry.listing()]
        return JSONResponse({"streams": streams})

    async def get_stream(request: Request) -> Response:
        may_see = private_view(request)
        if isinstance(may_see, Response):
            return may_see
        name = request.path_params["name"]
        stream = registry.get(name)
        if stream is None:
            return json_error(404, f"no stream named {name!r}")
        return JSONResponse(stream_json(stream, may_see(name)))

    async def event_stream(request: Request) -> Response:
        may_see = private_view(request)
        if isinstance(may_see, Response):
            return may_see
        try:
            slot = budget.take(client_ip(request))
        except Refused as exc:
            refusal = json_error(exc.code, exc.reason)
            refusal.headers["Retry-After"] = str(budget.retry_after)
            return refusal
        sub = bus.subscribe(maxsize=256)

        async def body() -> AsyncIterator[str]:
            try:
                yield ": meshcast events\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(sub.get(), SSE_HEARTBEAT_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    doc = event.to_json()
                    if not may_see(str(event.data.get("name", ""))):
                        doc["data"] = {
                            k: v for k, v in event.data.items() if k not in PRIVATE_FIELDS
                        }
                    data = json.dumps(doc)
                    yield f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"
            finally:
                sub.close()

        return _HeldStream(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            release=(sub.close, slot.release),
        )

    async def player_file(request: Request) -> Response:
        files = STUDIO_FILES if request.url.path.startswith("/studio/") else PLAYER_FILES
        relative = files.get(request.path_params.get("file", ""))
        if relative is None:
            return json_error(404, "not found", path=request.url.path)
        path = player_dir / relative
        if not path.is_file():
            return json_error(
                503, "player assets not installed (run `make up` or `make player`)", file=relative
            )
        media_type = PLAYER_TYPES[path.suffix]
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": PLAYER_CACHE})

    async def poster(request: Request) -> Response:
        admitted = _admit(request, "live", guard)
        if isinstance(admitted, Response):
            return admitted
        media, _ = admitted
        image = await live_poster(media.name) if live_poster is not None else None
        if image is None:
            return json_error(404, "no picture of this stream (yet)", path=request.url.path)
        sent(request, request.url.path, len(image))  # an edge's fetch: the network's log
        body = b"" if request.method == "HEAD" else image
        headers = {"Cache-Control": "public, max-age=10", "Content-Length": str(len(image))}
        return Response(body, media_type="image/jpeg", headers=headers)

    async def studio_config(request: Request) -> Response:
        # On the origin the studio calls its own API; edges answer with the origin's URL.
        return JSONResponse({"api": ""}, headers={"Cache-Control": "no-store"})

    async def landing(request: Request) -> Response:
        def viewers(name: str) -> int:
            extras = stream_extras(name) if stream_extras is not None else {}
            count = extras.get("viewers", 0)
            return count if isinstance(count, int) else 0

        page = landing_page(
            registry.listing(), viewers, catalogue() if catalogue is not None else ()
        )
        return HTMLResponse(page, headers={"Cache-Control": "public, max-age=2"})

    live_handler = live_file
    if segment_store is not None:
        from_store = live_from_store(segment_store, registry, guard)

        async def live_handler(request: Request) -> Response:
            response = await from_store(request)
            if response.status_code == 200:
                sent(request, request.url.path, len(response.body))
            return response

    if on_live_request is not None:
        serve_live, count = live_handler, on_live_request

        async def live_handler(request: Request) -> Response:
            response = await serve_live(request)
            if response.status_code == 200:
                count(request)  # a viewer's request (the counter skips edges)
            return response

    routes = [
        Route("/", landing),
        Route("/player/", player_file),
        Route("/player/{file:path}", player_file),
        Route("/studio/", player_file),
        Route("/studio/config.json", studio_config),
        Route("/studio/{file:path}", player_file),
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint(metrics)),
        Route("/api/streams", list_streams),
        Route("/api/streams/{name}", get_stream),
        Route("/api/events", event_stream),
        Route("/live/{name}/poster.jpg", poster, methods=["GET", "HEAD"]),
        Route("/live/{path:path}", live_handler, methods=["GET", "HEAD"]),
        Route("/vod/{path:path}", vod_file, methods=["GET", "HEAD"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    # WHIP publishers in browsers POST/DELETE from other origins and read Location/Link.
    return CorsOnly(app, CORS_PREFIXES, ("POST", "DELETE", "PATCH"), ("Location", "Link"))


class _HeldStream(StreamingResponse):
    """A streaming response that gives back what it holds (a budget slot, a subscription)
    however it ends, even when the client leaves before the first byte (the body
    generator's ``finally`` never runs then)."""

    def __init__(
        self, content: AsyncIterator[str], release: Sequence[Callable[[], None]], **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for release in self._release:
                release()


def live_from_store(
    store: S3Store, registry: StreamRegistry, guard: MediaGuard | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """Live files read back from an S3 segment store (``--store s3://…``), not local disk."""

    async def live_file(request: Request) -> Response:
        admitted = _admit(request, "live", guard)
        if isinstance(admitted, Response):
            return admitted
        media, token = admitted
        data = await _read(store, f"live/{media.name}/{media.relative}", request)
        if isinstance(data, Response):
            return data
        if data is None:
            stream = registry.get(media.name)
            reason = "stream not live" if stream is None else "not available (yet)"
            return json_error(404, reason, path=request.url.path)
        if media.is_manifest:
            cache = LIVE_MANIFEST_CACHE
            if token is not None and PEER_HEADER not in request.headers:
                cache = "private, no-store"
                data = rewrite_manifest(media.relative, data, token)
        else:
            cache = _live_media_cache(media)
        return _bytes_response(request, data, media, cache)

    return live_file


def _previous_publication(path: Path, media: MediaPath, stream: LiveStream | None) -> bool:
    """A manifest or init.mp4 written before the live publication of its name started:
    the previous one's, until the new transcoder clears them (it starts in a second)."""
    if stream is None or not stream.live or not (media.is_manifest or media.is_latest_init):
        return False
    try:
        return path.stat().st_mtime < stream.started_at
    except FileNotFoundError:
        return True


def _live_media_cache(media: MediaPath) -> str:
    """Segments and versioned inits never change; the rewritten init.mp4 does."""
    return MUTABLE_INIT if media.is_latest_init else IMMUTABLE


def _admit(
    request: Request, kind: str, guard: MediaGuard | None
) -> tuple[MediaPath, str | None] | Response:
    """The request's media path of ``kind`` and the viewer's token (None: public), or the
    response refusing it (not a contract path, or the access guard said no)."""
    media = parse_media_path(request.url.path)
    if media is None or media.kind != kind:
        return json_error(404, "not found", path=request.url.path)
    if guard is None:
        return media, None
    refusal, token = guard(request, media)
    return refusal if refusal is not None else (media, token)


async def _read(store: SegmentStore, key: str, request: Request) -> bytes | Response | None:
    """A stored object's bytes (None: absent), or a 502 when the store cannot answer."""
    try:
        return await asyncio.to_thread(store.get, key)
    except (S3StoreError, httpx.HTTPError) as exc:
        return json_error(502, f"segment store: {exc}", path=request.url.path)


def _bytes_response(request: Request, data: bytes, media: MediaPath, cache: str) -> Response:
    body = b"" if request.method == "HEAD" else data
    headers = {"Cache-Control": cache, "Content-Length": str(len(data))}
    return Response(body, media_type=media.content_type, headers=headers)
