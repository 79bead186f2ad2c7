"""``meshcast transcoder``: a transcoder node on its own process or host.

It listens for streams from origins (one TCP connection per stream, frames of
``meshcast/ingest_wire.py``), runs each in the same per-stream worker process as an
embedded origin (``WorkerSink`` -> ``LadderPipeline``), writes segments into its segment
store (a volume shared with the origin, or S3 across hosts), and announces itself and its
load on the event bus so origins can assign streams to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meshcast.config import TranscoderNodeConfig
from meshcast.events import TranscoderHeartbeat
from meshcast.http import EXCEPTION_HANDLERS, HttpService
from meshcast.ingest import deliver
from meshcast.ingest_wire import End, Hello, WireDecoder, WireError
from meshcast.metrics import metrics_endpoint
from meshcast.nats_bus import NatsBus
from meshcast.paths import parse_media_path
from transcoder.worker import WorkerSink

log = logging.getLogger(__name__)


class TranscoderNode:
    def __init__(self, config: TranscoderNodeConfig) -> None:
        self.config = config
        self.bus = NatsBus(config.bus, f"transcoder@{config.host}:{config.port}")
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.workers: dict[str, WorkerSink] = {}
        self.metrics = CollectorRegistry()
        Gauge(
            "meshcast_transcoder_streams", "Streams transcoding now", registry=self.metrics
        ).set_function(lambda: sum(w.alive for w in self.workers.values()))
        self.refused = Counter(
            "meshcast_transcoder_refused_connections",
            "Ingest connections refused (bad secret, malformed, duplicate)",
            registry=self.metrics,
        )
        self.http = HttpService(self._app(), config.host, config.http_port, "transcoder")

    def _app(self) -> Starlette:
        async def healthz(request: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "status": "ok",
                    "role": "transcoder",
                    "ingest": self.ingest_url,
                    "bus_connected": self.bus.connected.is_set(),
                    "streams": sorted(n for n, w in self.workers.items() if w.alive),
                }
            )

        routes = [Route("/healthz", healthz), Route("/metrics", metrics_endpoint(self.metrics))]
        return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    @property
    def ingest_url(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"tcp://{self.config.host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.config.host, self.config.port)
        await self.http.start()
        await self.bus.start()
        self._tasks.append(asyncio.create_task(self._announce()))
        log.info("transcoder node: ingest %s, http %s (bus %s, store %s)", self.ingest_url,
                 self.url, self.config.bus, self.config.data_dir)  # fmt: skip

    async def _announce(self) -> None:
        while True:
            self.workers = {n: w for n, w in self.workers.items() if w.alive}
            self.bus.emit(
                TranscoderHeartbeat(self.ingest_url, len(self.workers), self.config.capacity)
            )
            await asyncio.sleep(self.config.heartbeat)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        decoder = WireDecoder()
        sink: WorkerSink | None = None
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(256 * 1024):
                for item in decoder.feed(data):
                    if isinstance(item, Hello):
                        sink = self._open(item, peer, loop)
                    elif isinstance(item, End):
                        assert sink is not None
                        sink.on_end()
                        sink = None
                    elif sink is not None:
                        deliver(sink, item)
        except (WireError, PermissionError) as exc:
            self.refused.inc()
            log.warning("transcoder: refused connection from %s: %s", peer, exc)
        except OSError as exc:
            log.warning("transcoder: connection from %s lost: %s", peer, exc)
        finally:
            if sink is not None:  # origin gone without an End: finish the playlists
                log.warning("stream %s: origin connection closed mid-stream", sink.name)
                sink.on_end()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _open(self, hello: Hello, peer: object, loop: asyncio.AbstractEventLoop) -> WorkerSink:
        if not hmac.compare_digest(hello.secret.encode(), self.config.secret.encode()):
            raise PermissionError("wrong transcoder secret")
        # The name becomes a directory in the store: same rules as a playback URL.
        if parse_media_path(f"/live/{hello.stream}/master.m3u8") is None:
            raise WireError(f"invalid stream name {hello.stream!r}")
        if (old := self.workers.get(hello.stream)) is not None and old.alive:
            raise WireError(f"stream {hello.stream!r} is already transcoding here")

        def failed(reason: str) -> None:
            log.error("stream %s: %s", hello.stream, reason)

        sink = WorkerSink(hello.stream, self.config.data_dir, self.config.transcode, failed)
        self.workers[hello.stream] = sink
        log.info("stream %s: assigned by %s", hello.stream, peer)
        return sink

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for sink in self.workers.values():
            sink.on_end()
        for sink in self.workers.values():
            await asyncio.to_thread(sink.join, 15)
        await self.http.close()
        await self.bus.close()
