"""A name published again (new codec parameters, a fresh timeline) as edges without the
event bus see it: they must never mix the two publications, and never keep serving the
first one's ended playlist."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from meshcast.paths import IMMUTABLE, MUTABLE_INIT
from tests.clients import decode, extinf_seconds, ffmpeg_publish, finished
from tests.conftest import rtmp_url, wait_for_state
from tests.e2e.test_edge import running_mesh
from tests.e2e.test_ladder import wait_for_url

pytestmark = pytest.mark.e2e


def map_uri(playlist: str) -> str:
    match = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
    assert match, playlist
    return match.group(1)


async def test_republished_audio_parameters_reach_viewers_through_an_edge(
    tmp_path: Path, ffmpeg_cli: str
) -> None:
    async with running_mesh(tmp_path, edges=1) as mesh:
        key = mesh.origin.keys.create("re")
        edge = f"{mesh.edges[0].url}/live/re/audio"
        err = await finished(await ffmpeg_publish(rtmp_url(mesh.origin, key), 4.0))
        assert not err, err
        await wait_for_state(mesh.origin, "re", "ended")
        await wait_for_url(f"{mesh.origin.url}/live/re/audio/index.m3u8", 30, "ENDLIST")
        async with httpx.AsyncClient(timeout=10) as client:
            # A viewer plays the first publication through the edge (which caches it all).
            first = (await client.get(f"{edge}/index.m3u8")).text
            for name in (map_uri(first), "init.mp4"):
                assert (await client.get(f"{edge}/{name}")).status_code == 200
            assert (await decode(f"{edge}/index.m3u8")).sample_rate == 44100

            proc = await ffmpeg_publish(
                rtmp_url(mesh.origin, key), 4.0, sample_rate=48000, channels=1
            )
            assert not await finished(proc)
            await wait_for_state(mesh.origin, "re", "ended")
            origin_playlist = (
                await wait_for_url(f"{mesh.origin.url}/live/re/audio/index.m3u8", 30, "ENDLIST")
            ).text
            # Once the edge has the new playlist (the ended one lives 1 s in caches; the
            # wait is generous so that this test is about the init segment only)...
            deadline = asyncio.get_running_loop().time() + 15
            while (await client.get(f"{edge}/index.m3u8")).text != origin_playlist:
                assert asyncio.get_running_loop().time() < deadline, "edge kept the old playlist"
                await asyncio.sleep(0.25)
            # ...what ffprobe/ffmpeg decode through it is the new audio, at its own rate:
            # as many seconds decoded as the playlist announces.
            decoded = await decode(f"{edge}/index.m3u8")
            assert (decoded.sample_rate, decoded.channels) == (48000, 1)
            assert abs(decoded.audio_seconds - extinf_seconds(origin_playlist)) < 0.1
            # Each publication names its own immutable init; init.mp4 is the latest one.
            assert map_uri(origin_playlist) != map_uri(first)
            versioned = await client.get(f"{edge}/{map_uri(origin_playlist)}")
            assert versioned.headers["cache-control"] == IMMUTABLE
            latest = await client.get(f"{mesh.origin.url}/live/re/audio/init.mp4")
            assert latest.headers["cache-control"] == MUTABLE_INIT
            assert latest.content == versioned.content


async def test_edge_stops_serving_the_ended_playlist_when_the_name_is_live_again(
    tmp_path: Path, ffmpeg_cli: str
) -> None:
    async with running_mesh(tmp_path, edges=1) as mesh:
        key = mesh.origin.keys.create("again")
        err = await finished(await ffmpeg_publish(rtmp_url(mesh.origin, key), 3.0))
        assert not err, err
        await wait_for_state(mesh.origin, "again", "ended")
        origin = f"{mesh.origin.url}/live/again/audio/index.m3u8"
        edge = f"{mesh.edges[0].url}/live/again/audio/index.m3u8"
        await wait_for_url(origin, 30, "ENDLIST")
        async with httpx.AsyncClient(timeout=10) as client:
            ended = await client.get(edge)  # cached by the edge, as a viewer would
            assert "#EXT-X-ENDLIST" in ended.text
            proc = await ffmpeg_publish(rtmp_url(mesh.origin, key), 8.0)
            try:
                deadline = asyncio.get_running_loop().time() + 30
                await wait_for_state(mesh.origin, "again", "live")
                while True:  # the new publication's first playlist on the origin
                    live = await client.get(origin)
                    # Never the previous publication's, even before the new one has one.
                    assert "#EXT-X-ENDLIST" not in live.text, live.text
                    if "#EXTINF" in live.text:
                        break
                    assert asyncio.get_running_loop().time() < deadline, live.text
                    await asyncio.sleep(0.1)
                # A viewer arriving now through the edge gets the live stream at once
                # (the manifests' max-age is one second), not the finished one.
                await asyncio.sleep(1.2)
                now = await client.get(edge)
                assert now.status_code == 200 and "#EXT-X-ENDLIST" not in now.text, now.text
                assert map_uri(now.text) != map_uri(ended.text)
            finally:
                await finished(proc)
