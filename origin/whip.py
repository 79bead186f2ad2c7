"""WHIP ingest (RFC 9725) with aiortc: browsers, OBS 30+ and FFmpeg publish over WebRTC.

``POST /whip/NAME`` (``Authorization: Bearer KEY``, ``Content-Type: application/sdp``)
answers ``201`` with the SDP answer and ``Location: /whip/NAME/SESSION``; ``DELETE`` on that
URL ends the stream. The key check and the one-publisher-per-name rule are the RTMP ones
(KeyStore, StreamRegistry). No trickle ICE: the answer carries all our candidates and
``PATCH`` answers 405, which RFC 9725 allows. The session URL is an unguessable capability
(192 random bits), so ``DELETE`` needs no token.

Media path (one decode): aiortc's RTCRtpReceiver reassembles RTP into encoded frames and
hands them to a decoder thread through a queue. We replace that queue with ``_FrameTap``,
which gives the *encoded* frames (H.264 Annex-B, VP8, Opus, RTP timestamps) to
``whip_media``'s adapters; their configs and packets go through the same registry stream,
WorkerSink and LadderPipeline as RTMP. aiortc's own decoder thread then sees only the
end-of-stream marker and never decodes, so the only decode is in the transcoder worker,
off the event loop. The hook is a private attribute of aiortc's receiver, hence the exact
aiortc pin in pyproject.toml; ``_install_tap`` fails loudly if a new aiortc renames it.

Track clocks: aiortc rebases each track's RTP timestamps to 0 at its first frame, so each
track is re-anchored at the arrival time of its first frame relative to the session's first
frame (A/V sync within network jitter; RTCP sender reports are not used).

Abandoned sessions: ICE/DTLS ``failed`` or ``closed`` ends the stream at once; no media for
``WhipConfig.idle_timeout`` (never connected, publisher gone without DELETE) ends it too.
A gap of ``freeze_after`` without video is logged as a freeze and a keyframe requested
(PLI); the stream keeps going.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from meshcast.bodies import BodyError, read_body
from meshcast.config import WhipConfig
from meshcast.http import client_ip, json_error
from meshcast.ingest import IngestItem, deliver
from meshcast.keys import KeyRejected, KeyStore
from meshcast.ratelimit import Lockout, credential_id
from origin import dtls_system
from origin.registry import LiveStream, PublishRefused, StreamAlreadyLive, StreamRegistry
from origin.whip_media import RTP_OPUS_CLOCK, RTP_VIDEO_CLOCK, OpusAdapter, VideoAdapter
from origin.whip_sdp import OfferError, check_offer

log = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
SESSION_ALLOW = "DELETE, OPTIONS"
ENDPOINT_ALLOW = "POST, OPTIONS"
WATCHDOG_PERIOD = 0.25
PLI_MIN_INTERVAL = 0.5
_TAP_ATTRIBUTE = "_RTCRtpReceiver__decoder_queue"  # aiortc 1.16 RTCRtpReceiver


class WhipError(Exception):
    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class _FrameTap(queue.Queue[Any]):
    """Stands in for an RTCRtpReceiver's decoder queue: encoded frames go to ``on_frame``
    (called on the event loop, where aiortc puts them); only the end marker (None) is
    queued, so aiortc's decoder thread wakes up just to exit."""

    def __init__(self, on_frame: Callable[[str, bytes, int], None]) -> None:
        super().__init__()
        self._on_frame = on_frame

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:
            super().put(None, block, timeout)
            return
        codec, frame = item
        try:
            self._on_frame(codec.name, bytes(frame.data), int(frame.timestamp))
        except Exception:
            # Raising here would kill aiortc's RTP handling for the whole connection.
            log.exception("whip: dropping a frame that could not be ingested")


def _install_tap(receiver: Any, tap: _FrameTap) -> None:
    if not hasattr(receiver, _TAP_ATTRIBUTE):
        raise RuntimeError(
            "aiortc's RTCRtpReceiver has no decoder queue to tap: pin aiortc==1.16.0"
        )
    setattr(receiver, _TAP_ATTRIBUTE, tap)


class WhipMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Counter(
            "meshcast_whip_sessions", "WHIP offers by result", ["result"], registry=registry
        )
        self.frames = Counter(
            "meshcast_whip_frames", "Encoded frames received over WHIP", ["kind"], registry=registry
        )
        self.freezes = Counter(
            "meshcast_whip_video_freezes",
            "WHIP video gaps longer than freeze_after",
            registry=registry,
        )
        self.active = Gauge(
            "meshcast_whip_active_sessions", "Open WHIP sessions", registry=registry
        )


class WhipSession:
    def __init__(
        self,
        server: WhipServer,
        session_id: str,
        pc: RTCPeerConnection,
        stream: LiveStream,
    ) -> None:
        self.server = server
        self.id = session_id
        self.pc = pc
        self.stream = stream
        self.video = VideoAdapter()
        self.audio = OpusAdapter()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.created = loop.time()
        self.last_media: float | None = None
        self.last_video: float | None = None
        self.frozen_since: float | None = None
        self.freezes = 0
        self._first_frame: float | None = None
        self._offsets: dict[str, int] = {}
        self._last_pli = -1e9
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.stream.name

    @property
    def location(self) -> str:
        return f"/whip/{self.name}/{self.id}"

    def start(self) -> None:
        self._watchdog = asyncio.create_task(self._watch(), name=f"whip-{self.name}")

    # ---- media (event loop, called by the taps) --------------------------------------

    def on_frame(self, kind: str, codec: str, data: bytes, ts: int) -> None:
        if self.closed:
            return
        now = self._loop.time()
        if self._first_frame is None:
            self._first_frame = now
        clock = RTP_VIDEO_CLOCK if kind == "video" else RTP_OPUS_CLOCK
        offset = self._offsets.get(kind)
        if offset is None:
            offset = round((now - self._first_frame) / clock)
            self._offsets[kind] = offset
        self.last_media = now
        items: list[IngestItem]
        if kind == "video":
            if self.frozen_since is not None:
                log.info(
                    "whip %s: video resumed after a %.1f s freeze",
                    self.name,
                    now - self.frozen_since,
                )
                self.frozen_since = None
            self.last_video = now
            items = self.video.push(codec, data, ts + offset)
            if self.video.waiting_for_keyframe:
                self.request_keyframe("waiting for a keyframe")
        elif codec.lower() == "opus":
            items = self.audio.push(data, ts + offset)
        else:
            return
        self.server.metrics.frames.labels(kind).inc()
        for item in items:
            deliver(self.stream, item)

    def request_keyframe(self, why: str) -> None:
        now = self._loop.time()
        if now - self._last_pli < PLI_MIN_INTERVAL:
            return
        self._last_pli = now
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            receiver = transceiver.receiver
            for source in receiver.getSynchronizationSources():
                log.debug("whip %s: PLI to %d (%s)", self.name, source.source, why)
                task = asyncio.ensure_future(receiver._send_rtcp_pli(source.source))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # ---- lifetime --------------------------------------------------------------------

    async def _watch(self) -> None:
        cfg = self.server.config
        while not self.closed:
            await asyncio.sleep(WATCHDOG_PERIOD)
            now = self._loop.time()
            if not self.stream.live:
                self._spawn_close(f"stream ended by the server ({self.stream.end_reason})")
                return
            idle = now - (self.last_media if self.last_media is not None else self.created)
            if idle > cfg.idle_timeout:
                what = "no media since" if self.last_media is not None else "no media within"
                log.warning("whip %s: %s %.0f s; closing the session", self.name, what, idle)
                self._spawn_close(f"abandoned: {what} {cfg.idle_timeout:g} s")
                return
            if (
                self.last_video is not None
                and self.frozen_since is None
                and now - self.last_video > cfg.freeze_after
            ):
                self.frozen_since = self.last_video
                self.freezes += 1
                self.server.metrics.freezes.inc()
                log.warning(
                    "whip %s: video freeze (no frame for %.1f s); requesting a keyframe",
                    self.name,
                    now - self.last_video,
                )
                self.video.waiting_for_keyframe = True
                self._last_pli = -1e9
                self.request_keyframe("freeze")

    def _spawn_close(self, reason: str) -> None:
        task = asyncio.create_task(self.close(reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("whip %s: connection %s", self.name, state)
        if state in ("failed", "closed") and not self.closed:
            self._spawn_close(f"WebRTC connection {state}")

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.forget(self)
        self.server.registry.end(self.stream, reason)
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        try:
            await self.pc.close()
        except Exception:
            log.exception("whip %s: closing the peer connection failed", self.name)
        log.info(
            "whip %s: session %s closed (%s): %d video frames (%d dropped), %d audio, %d freezes",
            self.name,
            self.id[:8],
            reason,
            self.video.frames,
            self.video.dropped,
            self.audio.frames,
            self.freezes,
        )


class WhipServer:
    def __init__(
        self,
        config: WhipConfig,
        registry: StreamRegistry,
        keys: KeyStore,
        metrics: CollectorRegistry,
        key_failures: Lockout | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.keys = keys
        self.key_failures = key_failures or Lockout("whip key check")
        self.metrics = WhipMetrics(metrics)
        self.sessions: dict[str, WhipSession] = {}
        # Stock FFmpeg 8 WHIP (GnuTLS: a P-224 certificate) needs a DTLS stack that still
        # speaks P-224; without one, those publishers fail their handshake (logged).
        if not dtls_system.install():
            log.warning(
                "WHIP: no system OpenSSL 3 for DTLS; FFmpeg WHIP publishers with P-224 "
                "certificates (GnuTLS builds) will fail their DTLS handshake"
            )

    def forget(self, session: WhipSession) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.metrics.active.dec()

    def link_headers(self) -> list[str]:
        return [f'<{url}>; rel="ice-server"' for url in self.config.ice_servers]

    def authorize(self, name: str, authorization: str | None, ip: str = "-") -> None:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise WhipError(
                401, "missing 'Authorization: Bearer STREAM_KEY'", **{"WWW-Authenticate": "Bearer"}
            )
        try:
            owner = self.keys.verify(token)
            if owner != name:
                # A valid key aimed at another stream: least privilege, and it counts as a
                # failure (probing other creators' names with one's own key).
                raise KeyRejected(f"the key is for stream {owner!r}, not {name!r}")
        except KeyRejected as exc:
            retry = self.key_failures.failed(ip, credential_id(token))
            if retry is not None:
                raise WhipError(
                    429, "too many failed key attempts; retry later", **{"Retry-After": str(retry)}
                ) from None
            raise WhipError(
                401, f"publish refused: {exc}", **{"WWW-Authenticate": "Bearer"}
            ) from None

    async def publish(self, name: str, offer: str, remote: str) -> tuple[WhipSession, str]:
        """Negotiate one publisher; returns the session and our SDP answer."""
        summary = check_offer(offer)  # OfferError -> 400
        current = self.registry.get(name)
        if current is not None and current.live:
            raise WhipError(
                409, f"stream {name!r} is already live (from {current.protocol} {current.remote})"
            )
        if len(self.sessions) >= self.config.max_sessions:
            raise WhipError(503, f"too many WHIP sessions ({self.config.max_sessions})")
        servers = [RTCIceServer(urls=url) for url in self.config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers or None))
        holder: dict[str, WhipSession] = {}
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            except Exception as exc:  # aiortc raises assorted types for unusable SDP
                raise OfferError(f"offer rejected by the WebRTC stack: {exc}") from exc

            def tap_for(kind: str) -> _FrameTap:
                def on_frame(codec: str, data: bytes, ts: int) -> None:
                    session = holder.get("s")
                    if session is not None:
                        session.on_frame(kind, codec, data, ts)

                return _FrameTap(on_frame)

            for transceiver in pc.getTransceivers():
                _install_tap(transceiver.receiver, tap_for(transceiver.kind))
            await pc.setLocalDescription(await pc.createAnswer())
            try:
                stream = self.registry.publish(name, "whip", remote)
            except StreamAlreadyLive as exc:
                raise WhipError(409, str(exc)) from None
            except PublishRefused as exc:
                raise WhipError(503, str(exc)) from None
        except BaseException:
            await pc.close()
            raise
        session = WhipSession(self, secrets.token_urlsafe(24), pc, stream)
        holder["s"] = session
        self.sessions[session.id] = session
        self.metrics.active.inc()
        pc.on("connectionstatechange", session.on_connection_state)
        session.start()
        log.info(
            "whip %s: session %s from %s (video %s, audio %s)",
            name,
            session.id[:8],
            remote,
            "/".join(summary.video_codecs),
            "/".join(summary.audio_codecs) or "none",
        )
        return session, pc.localDescription.sdp

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close("server shutdown")


def _cors(headers: dict[str, str]) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
        "Access-Control-Expose-Headers": "Location, Link, ETag",
        **headers,
    }


def _error(exc: WhipError | OfferError, status: int | None = None) -> Response:
    if isinstance(exc, WhipError):
        response = json_error(exc.status, str(exc))
        response.headers.update(exc.headers)
        return response
    return json_error(status or 400, f"malformed or unusable SDP offer: {exc}")


async def _read_body(request: Request, limit: int) -> bytes:
    try:
        return await read_body(request, limit)
    except BodyError as exc:
        reason = f"offer larger than {limit} bytes" if exc.code == 413 else exc.reason
        raise WhipError(exc.code, reason) from None


def whip_routes(server: WhipServer) -> list[BaseRoute]:
    async def endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "OPTIONS":
            response = Response(
                status_code=204,
                headers=_cors({"Allow": ENDPOINT_ALLOW, "Accept-Post": SDP_TYPE}),
            )
            for link in server.link_headers():
                response.headers.append("Link", link)
            return response
        try:
            server.authorize(name, request.headers.get("authorization"), client_ip(request))
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != SDP_TYPE:
                raise WhipError(415, f"Content-Type must be {SDP_TYPE}, got {content_type!r}")
            body = await _read_body(request, server.config.max_offer_bytes)
            try:
                offer = body.decode("utf-8")
            except UnicodeDecodeError:
                raise OfferError("offer is not UTF-8 text") from None
            client = request.client
            remote = f"{client.host}:{client.port}" if client else "?"
            session, answer = await server.publish(name, offer, remote)
        except WhipError as exc:
            server.metrics.sessions.labels(str(exc.status)).inc()
            log.warning("whip %s: refused (%d): %s", name, exc.status, exc)
            return _error(exc)
        except OfferError as exc:
            server.metrics.sessions.labels("400").inc()
            log.warning("whip %s: refused (400): %s", name, exc)
            return _error(exc)
        server.metrics.sessions.labels("201").inc()
        response = Response(
            answer,
            status_code=201,
            media_type=SDP_TYPE,
            headers=_cors({"Location": session.location, "ETag": f'"{session.id[:16]}"'}),
        )
        for link in server.link_headers():
            response.headers.append("Link", link)
        return response

    async def resource(request: Request) -> Response:
        session = server.sessions.get(request.path_params["session"])
        if session is None or session.name != request.path_params["name"]:
            return json_error(404, "no such WHIP session", path=request.url.path)
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=_cors({"Allow": SESSION_ALLOW}))
        if request.method == "DELETE":
            await session.close("publisher sent DELETE")
            return Response(status_code=200, headers=_cors({}))
        # PATCH: trickle ICE and ICE restarts are not implemented; RFC 9725 section 4.3.1
        # lets a server answer 405 (the answer already lists all our candidates).
        response = json_error(405, "trickle ICE / ICE restart not supported; re-publish")
        response.headers.update(_cors({"Allow": SESSION_ALLOW}))
        return response

    return [
        Route("/whip/{name}", endpoint, methods=["POST", "OPTIONS"]),
        Route("/whip/{name}/{session}", resource, methods=["DELETE", "PATCH", "OPTIONS"]),
    ]
