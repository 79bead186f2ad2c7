"""Runs one edge: its HTTP app on its port."""

from __future__ import annotations

import logging

from edge.app import create_app
from meshcast.config import EdgeConfig
from meshcast.http import HttpService

log = logging.getLogger(__name__)


class EdgeService:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.app = create_app(config)
        self.http = HttpService(self.app, config.host, config.port, f"edge:{config.port}")

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.http.port}"

    async def start(self) -> None:
        await self.http.start()
        log.info("edge listening on %s (origin %s)", self.url, self.config.origin)

    async def close(self) -> None:
        await self.http.close()
        await self.app.state.client.aclose()
