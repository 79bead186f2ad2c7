"""Runs one origin: stream registry, RTMP listener, HTTP app, optional demo stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from fractions import Fraction

from prometheus_client import CollectorRegistry, Gauge

from meshcast.bodies import UPLOAD_MIN_RATE, BodyRule
from meshcast.config import OriginConfig
from meshcast.events import EventBus
from meshcast.http import HttpService
from meshcast.ingest import PacketSink
from meshcast.keys import KeyStore
from meshcast.nats_bus import make_bus
from meshcast.ratelimit import Lockout
from meshcast.s3store import S3Location, S3Store
from origin.access_api import AccessApi, access_routes
from origin.coordinator import Coordinator, coordinator_routes
from origin.demo import DemoSettings, DemoSource
from origin.entitlements import AccessStore
from origin.http_app import create_app
from origin.inference import inference_routes
from origin.posters import LivePosters
from origin.recordings import Recordings
from origin.registry import LiveStream, PublishRefused, StreamRegistry
from origin.remote_transcode import RemoteSink, TranscoderDirectory
from origin.rtmp_server import RtmpMetrics, RtmpServer
from origin.signing import Keyring
from origin.studio_api import StudioApi
from origin.viewers import ViewerStats
from origin.vod_service import VodService
from origin.whip import WhipServer, whip_routes
from transcoder.encoders import EncoderSettings, select_backend
from transcoder.ladder import plan_ladder
from transcoder.worker import WorkerSink

log = logging.getLogger(__name__)


class OriginService:
    def __init__(
        self,
        config: OriginConfig,
        bus: EventBus | None = None,
        demo_settings: DemoSettings | None = None,
    ) -> None:
        self.config = config
        self.bus = bus or make_bus(config.bus, f"origin@{config.host}:{config.http_port}")
        self.metrics = CollectorRegistry()
        self.registry = StreamRegistry(self.bus, config.ended_stream_ttl)
        self.keys = KeyStore(config.data_dir)
        # One failure budget per address and per presented key across RTMP, WHIP and the
        # API: a guesser cannot get three times the attempts by switching protocols.
        self.key_failures = Lockout("key check", config.key_failures_per_minute, window=60.0)
        self.access = AccessStore(config.data_dir, self.keys.owner_of)
        self.keyring = Keyring(config.data_dir)
        self.access_api = AccessApi(self.access, self.keys, self.keyring, self.key_failures)
        self.rtmp = RtmpServer(
            config,
            self.registry,
            self.keys,
            RtmpMetrics(self.metrics),
            self.key_failures,
            self.access_api.play_check,
        )
        Gauge(
            "meshcast_origin_live_streams", "Streams live now", registry=self.metrics
        ).set_function(lambda: len(self.registry.live_streams()))
        self._workers: set[WorkerSink] = set()
        self._remote: set[RemoteSink] = set()
        self.transcoders = TranscoderDirectory(self.bus)
        self.registry.add_sink_factory(self._start_transcoder)
        # The origin coordinates the contributor network (node registry, receipts, ledger).
        self.coordinator: Coordinator | None = None
        if config.network.enabled:
            self.coordinator = Coordinator(config.data_dir, config.network, self.bus)
        # Live and VOD files are read back from S3 when they are written there (--store).
        self.segment_store = (
            S3Store(S3Location.parse(config.transcode.segment_store))
            if config.transcode.segment_store
            else None
        )
        self.vod = VodService(
            config,
            self.keys,
            self.bus,
            store=self.segment_store,
            on_created=lambda asset, owner: self.access.set_policy(f"vod/{asset}", "public", owner),
        )
        self.viewers = ViewerStats(self.registry)
        self.studio = StudioApi(self.access_api, self.keys, self._rtmp_port)
        self.recordings = Recordings(
            config, self.keys, self.access, self.access_api, self.vod, self.bus
        )
        self.vod.origin_of = self.recordings.origin_of
        self.whip = WhipServer(
            config.whip, self.registry, self.keys, self.metrics, self.key_failures
        )
        self.app = create_app(
            self.registry,
            self.bus,
            self.metrics,
            config.data_dir,
            extra_routes=[
                *whip_routes(self.whip),
                *self.recordings.routes(),
                *self.viewers.routes(),
                *self.studio.routes(),
                *self.vod.routes(),
                *access_routes(self.access_api),
                *(coordinator_routes(self.coordinator) if self.coordinator else []),
                *(
                    inference_routes(self.coordinator.inference, self.access_api.principal)
                    if self.coordinator
                    else []
                ),
            ],
            guard=self.access_api.guard,
            on_peer_fetch=self.coordinator.record_fetch if self.coordinator else None,
            segment_store=self.segment_store,
            private_view=self.access_api.private_view,
            stream_extras=self._stream_extras,
            on_live_request=self.viewers.on_live_request,
            live_poster=LivePosters(self.vod.store).get,
            catalogue=self.recordings.catalogue,
        )
        self.http = HttpService(
            self.app,
            config.host,
            config.http_port,
            "origin",
            config.http,
            # tus PATCHes are the origin's only large bodies (streamed to disk).
            [BodyRule("/api/vod/", config.vod.max_upload, UPLOAD_MIN_RATE)],
        )
        self.demo = DemoSource(self.registry, demo_settings) if config.demo else None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    def _rtmp_port(self) -> int:
        # The configured one until the listener runs (0 = any: known once it listens).
        return self.rtmp.port if self.rtmp.listening else self.config.rtmp_port

    def _stream_extras(self, name: str) -> dict[str, object]:
        return {**self.viewers.stream_json(name), "recording": self.recordings.stream_info(name)}

    def _start_transcoder(self, stream: LiveStream) -> PacketSink:
        loop = asyncio.get_running_loop()

        def failed(reason: str) -> None:
            loop.call_soon_threadsafe(self.registry.end, stream, reason)

        mode = self.config.transcoders
        if mode != "local":
            url = self.transcoders.pick()
            if url is not None:
                remote = RemoteSink(stream.name, url, self.config.transcoder_secret, failed)
                self.recordings.unsupported(stream, "transcoded on a remote transcoder node")
                self._remote = {r for r in self._remote if not r.done} | {remote}
                return remote
            if mode == "remote":
                raise PublishRefused("no transcoder node is available; try again later")
        self._workers = {w for w in self._workers if w.alive}
        recording = self.recordings.begin(stream)
        try:
            sink = WorkerSink(
                stream.name,
                self.config.data_dir,
                self.config.transcode,
                failed,
                recording=recording,
            )
        except BaseException:
            self.recordings.abandon(stream)
            raise
        self._workers.add(sink)
        return self.recordings.watch(stream, sink, lambda: asyncio.to_thread(sink.wait))

    def check_encoder(self) -> None:
        """Fail at start-up, not at the first publish, when a forced encoder cannot open."""
        if self.config.transcode.encoder == "auto":
            return
        probe = plan_ladder(1280, 720)[-1]
        backend = select_backend(
            self.config.transcode.encoder, probe, EncoderSettings(fps=Fraction(30))
        )
        log.info("encoder backend %s forced and available", backend.value)

    async def start(self) -> None:
        self.check_encoder()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.bus.start()
        self.transcoders.start()
        await self.rtmp.start()
        await self.vod.start()
        await self.recordings.start()
        self.viewers.start()
        await self.http.start()
        if self.coordinator is not None:
            self.coordinator.start()
        log.info("origin HTTP on %s", self.url)
        if self.demo is not None:
            await self.demo.start()

    async def close(self) -> None:
        log.info("origin shutting down")
        if self.demo is not None:
            await self.demo.close()
        await self.rtmp.close()
        await self.whip.close()
        # Ended streams' workers are writing their last segments and ENDLIST: let them.
        for worker in list(self._workers):
            await asyncio.to_thread(worker.join, 15)
        for remote in list(self._remote):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await remote.flushed()
        await self.transcoders.close()
        await self.http.close()
        await self.recordings.close()
        await self.viewers.close()
        await self.vod.close()
        self.access.close()
        if self.coordinator is not None:
            await self.coordinator.close()
        await self.bus.close()
        if self.segment_store is not None:
            self.segment_store.close()
