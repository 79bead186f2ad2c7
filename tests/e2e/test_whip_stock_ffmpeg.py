"""Stock FFmpeg 8 ``-f whip`` with no extra flags (its GnuTLS build's own P-224 DTLS
certificate), through libavformat's whip muxer inside PyAV: the publisher gets a stream."""

from __future__ import annotations

import asyncio
import sys

import pytest

from origin.service import OriginService
from tests.conftest import wait_for_state
from tests.e2e.test_whip import check_ended_hls, whip_url

pytestmark = pytest.mark.e2e


async def test_stock_ffmpeg_whip_publishes_with_its_own_p224_certificate(
    origin: OriginService,
) -> None:
    key = origin.keys.create("stock")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.whip_publisher",
        whip_url(origin, "stock"),
        key,
        "5",
        "--stock",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    ended = await wait_for_state(origin, "stock", "ended")
    assert ended["end_reason"] == "publisher sent DELETE", ended
    decoded = await check_ended_hls(origin, "stock")
    assert decoded["240p"]["video"]["frames"] >= 4 * 30 - 10, decoded
    assert decoded["audio"]["audio"]["seconds"] >= 4.0, decoded
