"""Runs one origin: stream registry, RTMP listener, HTTP app, optional demo stream."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge

from meshcast.config import OriginConfig
from meshcast.events import EventBus
from meshcast.http import HttpService
from meshcast.keys import KeyStore
from origin.demo import DemoSource
from origin.http_app import create_app
from origin.registry import StreamRegistry
from origin.rtmp_server import RtmpMetrics, RtmpServer

log = logging.getLogger(__name__)


class OriginService:
    def __init__(self, config: OriginConfig, bus: EventBus | None = None) -> None:
        self.config = config
        self.bus = bus or EventBus()
        self.metrics = CollectorRegistry()
        self.registry = StreamRegistry(self.bus, config.ended_stream_ttl)
        self.keys = KeyStore(config.data_dir)
        self.rtmp = RtmpServer(config, self.registry, self.keys, RtmpMetrics(self.metrics))
        Gauge(
            "meshcast_origin_live_streams", "Streams live now", registry=self.metrics
        ).set_function(lambda: len(self.registry.live_streams()))
        self.app = create_app(self.registry, self.bus, self.metrics)
        self.http = HttpService(self.app, config.host, config.http_port, "origin")
        self.demo = DemoSource(self.registry) if config.demo else None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.rtmp.start()
        await self.http.start()
        log.info("origin HTTP on %s", self.url)
        if self.demo is not None:
            await self.demo.start()

    async def close(self) -> None:
        log.info("origin shutting down")
        if self.demo is not None:
            await self.demo.close()
        await self.rtmp.close()
        await self.http.close()
