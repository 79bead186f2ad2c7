"""Starts role services in one event loop, waits for health, stops them on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

import httpx

log = logging.getLogger(__name__)


class Service(Protocol):
    @property
    def url(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def wait_healthy(urls: Sequence[str], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    async with httpx.AsyncClient(timeout=2.0) as client:
        for url in urls:
            while True:
                try:
                    if (await client.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"{url}/healthz did not answer 200 within {within:.0f} s")
                await asyncio.sleep(0.1)


async def run_services(
    services: Sequence[Service], on_ready: Callable[[], str] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started: list[Service] = []
    try:
        for service in services:
            await service.start()
            started.append(service)
        await wait_healthy([s.url for s in services])
        if on_ready:
            print(on_ready(), flush=True)
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        for service in reversed(started):
            try:
                await service.close()
            except Exception:
                log.exception("error while stopping %s", service.url)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
