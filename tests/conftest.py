from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshcast.config import OriginConfig
from meshcast.keys import KeyStore
from origin.service import OriginService


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def ffmpeg_cli() -> str:
    path = shutil.which("ffmpeg")
    # `make test` installs Debian's ffmpeg; a missing one is a broken setup, not a skip.
    assert path, "ffmpeg CLI not found: run `make test` (installs Debian's ffmpeg)"
    return path


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[OriginService]:
    service = OriginService(
        OriginConfig(data_dir=tmp_path, http_port=0, rtmp_port=0, rtmp_idle_timeout=5.0)
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


@pytest.fixture
def keys(origin: OriginService) -> KeyStore:
    return origin.keys


def rtmp_url(origin: OriginService, key: str) -> str:
    return f"rtmp://127.0.0.1:{origin.rtmp.port}/live/{key}"


async def stream_json(origin: OriginService, name: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=origin.url) as client:
        body = (await client.get("/api/streams")).json()
    for stream in body["streams"]:
        if stream["name"] == name:
            result: dict[str, Any] = stream
            return result
    return None


async def wait_for_state(
    origin: OriginService, name: str, state: str, within: float = 15.0
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        stream = await stream_json(origin, name)
        if stream is not None and stream["state"] == state:
            return stream
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"stream {name} not {state} within {within} s: {stream}")
        await asyncio.sleep(0.1)
