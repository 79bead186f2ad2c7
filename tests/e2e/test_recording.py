"""Live recording and clips end to end: publish with the ffmpeg CLI over RTMP, the ended
stream becomes a VOD asset (every rung decoded with PyAV), clips of the live and of the
recorded stream, and the bad inputs (keys, owners, ranges, budgets, no-record keys)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from meshcast.config import OriginConfig, TranscodeConfig, VodConfig
from meshcast.ingest import deliver
from meshcast.keys import API_KIND
from meshcast.store import LocalStore
from origin.demo import DemoSettings, generate
from origin.recordings import RecordingDb, RecordingRow
from origin.service import OriginService
from origin.vod_jobs import JobStore
from tests.conftest import free_port, rtmp_url, wait_for_state
from tests.e2e.test_rtmp_ingest import ffmpeg_push
from transcoder.pipeline import LadderPipeline
from transcoder.recording import RecordingTarget

pytestmark = pytest.mark.e2e

SMALL_LADDER = ((360, 600), (240, 300))
SEGMENT = 2.0


def config(data: Path, vod: VodConfig | None = None) -> OriginConfig:
    return OriginConfig(
        data_dir=data,
        http_port=free_port(),
        rtmp_port=0,
        rtmp_idle_timeout=5.0,
        transcode=TranscodeConfig(ladder=SMALL_LADDER, encoder="x264"),
        vod=vod or VodConfig(),
    )


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[OriginService]:
    service = OriginService(config(tmp_path / "origin"))
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def wait_asset(
    client: httpx.AsyncClient, asset: str, state: str = "ready", within: float = 60
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        body: dict[str, Any] = (await client.get(f"/api/vod/{asset}")).json()
        if body.get("state") == state:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"asset {asset} not {state} within {within} s: {body}")
        await asyncio.sleep(0.2)


async def recording_of(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/api/streams/{name}")).json()
    recording: dict[str, Any] | None = body.get("recording")
    assert recording is not None, body
    return recording


def decode_rungs(base: str, renditions: list[str]) -> dict[str, float]:
    """Every rendition's media playlist decoded to the end with PyAV: seconds of media."""
    seconds = {}
    for name in renditions:
        with av.open(f"{base}/{name}/index.m3u8", timeout=20) as container:
            stream = container.streams[0]
            first = last = None
            count = 0
            for frame in container.decode(stream):
                assert frame.pts is not None
                t = float(frame.pts * frame.time_base)
                first = t if first is None else first
                last = t + (float(frame.duration * frame.time_base) if frame.duration else 0)
                count += 1
            assert count > 0 and first is not None and last is not None, name
            seconds[name] = last - first
    return seconds


async def publish(ffmpeg: str, origin: OriginService, key: str, seconds: float) -> None:
    proc = await ffmpeg_push(ffmpeg, rtmp_url(origin, key), seconds)
    assert await asyncio.wait_for(proc.wait(), seconds + 60) == 0


async def test_recorded_stream_becomes_an_asset_and_clips_are_cut(
    origin: OriginService, ffmpeg_cli: str
) -> None:
    key = origin.keys.create("show", owner="alice")
    alice = origin.keys.create("alice", API_KIND)
    bob = origin.keys.create("bob", API_KIND)
    bobs_stream = origin.keys.create("bobcam", owner="bob")
    revoked = origin.keys.create("carol", API_KIND)
    origin.keys.revoke("carol", API_KIND)
    async with httpx.AsyncClient(base_url=origin.url, timeout=60) as api:
        pusher = asyncio.create_task(publish(ffmpeg_cli, origin, key, 26))
        await wait_for_state(origin, "show", "live", 20)
        recording = await recording_of(api, "show")
        assert recording["state"] == "recording" and recording["reason"] is None
        asset = recording["asset"]
        listed = {a["id"]: a for a in (await api.get("/api/vod")).json()["assets"]}
        assert listed[asset]["state"] == "recording" and listed[asset]["owner"] == "alice"
        assert listed[asset]["source"] == "recording" and listed[asset]["stream"] == "show"

        # Bad clip requests while live: refused with the reason, nothing cut.
        clips = "/api/streams/show/clips"
        r = await api.post(clips, json={"seconds": 5})
        assert r.status_code == 401
        r = await api.post(clips, json={"seconds": 5}, headers=bearer("api_nope_nope"))
        assert r.status_code == 401 and "API key refused" in r.json()["error"]
        r = await api.post(clips, json={"seconds": 5}, headers=bearer(revoked))
        assert r.status_code == 401 and "revoked" in r.json()["error"]
        r = await api.post(clips, json={"seconds": 5}, headers=bearer(bob))
        assert r.status_code == 403 and "not yours" in r.json()["error"]
        r = await api.post(clips, json={"seconds": 5}, headers=bearer(bobs_stream))
        assert r.status_code == 403 and "not yours" in r.json()["error"]
        r = await api.post(clips, json={"seconds": "5"}, headers=bearer(alice))
        assert r.status_code == 400
        r = await api.post(clips, json={"seconds": 3600}, headers=bearer(alice))
        assert r.status_code == 422 and r.json()["reason"] == "out_of_range"
        assert "longer than the" in r.json()["error"]

        # A clip of the live stream: the last 20 s, once 22 s are recorded.
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            r = await api.post(clips, json={"seconds": 20}, headers=bearer(alice))
            if r.status_code == 201 or asyncio.get_running_loop().time() > deadline:
                break
            assert r.status_code == 422, r.text
            await asyncio.sleep(1)
        assert r.status_code == 201, r.text
        live_clip = r.json()
        assert live_clip["source"] == asset
        # The live poster: the picture on air now, short-lived in caches.
        poster = await api.get("/live/show/poster.jpg")
        assert poster.status_code == 200 and poster.content.startswith(b"\xff\xd8")
        assert poster.headers["cache-control"] == "public, max-age=10"
        assert (await api.get("/live/nobody/poster.jpg")).status_code == 404
        # DVR while recording: the live playlists keep every segment of the last 2 h
        # (not the 6 of an unrecorded stream), the MPD says so too.
        live = (await api.get("/live/show/360p/index.m3u8")).text
        assert live.count(".m4s") >= 10, live
        assert (
            'timeShiftBufferDepth="PT7200.000S"' in (await api.get("/live/show/manifest.mpd")).text
        )
        assert abs(live_clip["duration"] - 20) <= SEGMENT, live_clip

        # The stream ends while a clip is cut: both finish, nothing is lost.
        await pusher
        # The stream key itself may clip its stream too (it acts for the owner).
        ending_clip = await api.post(clips, json={"seconds": 10}, headers=bearer(key))
        assert ending_clip.status_code == 201, ending_clip.text
        await wait_for_state(origin, "show", "ended", 20)
        ready = await wait_asset(api, asset)
        assert abs(ready["duration"] - 26) <= SEGMENT, ready
        assert set(ready["renditions"]) == {"360p", "240p", "audio"}
        assert ready["playback"]["hls"].endswith(f"/vod/{asset}/master.m3u8")
        assert (await recording_of(api, "show"))["state"] == "ready"

        base = f"{origin.url}/vod/{asset}"
        seconds = await asyncio.to_thread(decode_rungs, base, ready["renditions"])
        for name, duration in seconds.items():
            assert abs(duration - ready["duration"]) <= SEGMENT, (name, seconds)
        master = (await api.get(f"{base}/master.m3u8")).text
        assert "360p/index.m3u8" in master and "240p/index.m3u8" in master
        playlist = (await api.get(f"{base}/360p/index.m3u8")).text
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist and "#EXT-X-ENDLIST" in playlist
        assert (await api.get(f"{base}/manifest.mpd")).text.count('type="static"') == 1

        # A clip of the last 20 s of the recorded stream decodes to 20 s (±1 segment).
        r = await api.post(clips, json={"seconds": 20}, headers=bearer(alice))
        assert r.status_code == 201, r.text
        clip = r.json()
        assert clip["playback"]["hls"].endswith(f"/vod/{clip['id']}/master.m3u8")
        clip_ready = await wait_asset(api, clip["id"])
        assert clip_ready["owner"] == "alice"
        assert (clip_ready["source"], clip_ready["parent"]) == ("clip", asset)
        clip_seconds = await asyncio.to_thread(
            decode_rungs, f"{origin.url}/vod/{clip['id']}", clip_ready["renditions"]
        )
        for name, duration in clip_seconds.items():
            assert abs(duration - 20) <= SEGMENT, (name, clip_seconds)
        for earlier in (live_clip, ending_clip.json()):
            done = await wait_asset(api, earlier["id"])
            await asyncio.to_thread(decode_rungs, f"{origin.url}/vod/{earlier['id']}",
                                    done["renditions"])  # fmt: skip
        r = await api.post(clips, json={"seconds": 60}, headers=bearer(alice))
        assert r.status_code == 422 and "longer than the" in r.json()["error"]

        # Poster and thumbnails come without re-encoding the video.
        deadline = asyncio.get_running_loop().time() + 60
        while (poster := await api.get(f"{base}/poster.jpg")).status_code != 200:
            assert asyncio.get_running_loop().time() < deadline, poster.text
            await asyncio.sleep(0.5)
        assert poster.content.startswith(b"\xff\xd8")
        assert "thumbnails.jpg#xywh=" in (await api.get(f"{base}/thumbnails.vtt")).text

        # A republication is a new recording; the first one's files stay as they were.
        files_before = sorted(p.name for p in (origin.config.data_dir / "vod" / asset).rglob("*"))
        await publish(ffmpeg_cli, origin, key, 4)
        await wait_for_state(origin, "show", "ended", 20)
        second = (await recording_of(api, "show"))["asset"]
        assert second != asset
        await wait_asset(api, second)
        files_after = sorted(p.name for p in (origin.config.data_dir / "vod" / asset).rglob("*"))
        assert files_after == files_before
        listing = (await api.get("/api/streams/show/recordings")).json()["recordings"]
        assert [(r["asset"], r["kind"]) for r in listing if r["kind"] == "live"] == [
            (asset, "live"),
            (second, "live"),
        ]


async def test_budget_and_no_record_keys(tmp_path: Path, ffmpeg_cli: str) -> None:
    # The owner's VOD quota, about 4 s of this ladder: the recording stops there, keeping
    # what it has; uploads count against the same quota.
    service = OriginService(config(tmp_path / "o", VodConfig(max_owner_bytes=600_000)))
    await service.start()
    try:
        key = service.keys.create("small", owner="dave")
        plain = service.keys.create("plain", owner="dave", record=False)
        dave = service.keys.create("dave", API_KIND)
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as api:
            await asyncio.gather(
                publish(ffmpeg_cli, service, key, 10), publish(ffmpeg_cli, service, plain, 3)
            )
            await wait_for_state(service, "small", "ended", 20)
            assert (await api.get("/api/streams/plain")).json()["recording"] is None
            r = await api.post("/api/streams/plain/clips", json={"seconds": 2},
                               headers=bearer(dave))  # fmt: skip
            assert r.status_code == 404 and "--no-record" in r.json()["error"]

            recording = await recording_of(api, "small")
            asset = recording["asset"]
            ready = await wait_asset(api, asset)
            assert 0 < ready["duration"] < 9, ready
            assert ready["size"] <= 600_000
            assert "disk budget" in (await recording_of(api, "small"))["reason"]
            await asyncio.to_thread(decode_rungs, f"{service.url}/vod/{asset}",
                                    ready["renditions"])  # fmt: skip

            # Full budget: the next publication goes live, unrecorded, and says why.
            pusher = asyncio.create_task(publish(ffmpeg_cli, service, key, 3))
            await wait_for_state(service, "small", "live", 20)
            refused = await recording_of(api, "small")
            assert refused["state"] == "refused" and "budget" in refused["reason"]
            await pusher
            r = await api.post("/api/streams/small/clips", json={"seconds": 2},
                               headers=bearer(dave))  # fmt: skip
            assert r.status_code == 507 and r.json()["reason"] == "budget"
            upload = await api.post(
                "/api/vod",
                headers={**bearer(dave), "Tus-Resumable": "1.0.0", "Upload-Length": "100000"},
            )
            assert upload.status_code == 413 and "quota" in upload.json()["error"]
            assert [a["id"] for a in (await api.get("/api/vod")).json()["assets"]] == [asset]
    finally:
        await service.close()


async def test_restart_finishes_an_interrupted_recording(tmp_path: Path) -> None:
    """An origin that died mid-stream: the worker's index (up to its last segment) is
    finished into an asset at the next start; nothing recorded is lost."""
    data = tmp_path / "o"
    store = LocalStore(data)
    target = RecordingTarget("vod/cafe0001", 1 << 30, 100)
    pipeline = LadderPipeline(
        "show", store, TranscodeConfig(ladder=SMALL_LADDER, encoder="x264"), recording=target
    )
    # 7 s in, no end of stream: the process "died" (no ENDLIST, no final flush).
    generate(
        DemoSettings(width=640, height=360, fps=25, duration=7, realtime=False),
        lambda item: deliver(pipeline, item),
        lambda: False,
    )
    jobs = JobStore(data / "vod" / "jobs.sqlite")
    jobs.create("cafe0001", "alice", "show (interrupted)", 0)
    jobs.update("cafe0001", state="recording")
    jobs.close()
    db = RecordingDb(data / "vod" / "recordings.sqlite")
    db.add(RecordingRow("cafe0001", "show", "alice", "live", None, time.time()))
    db.close()

    service = OriginService(config(data))
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=service.url) as api:
            ready = await wait_asset(api, "cafe0001")
            # Segments cut before the "crash": 3 whole ones of 2 s (the open 4th is lost).
            assert ready["duration"] == pytest.approx(6.0, abs=0.1), ready
            assert set(ready["renditions"]) == {"360p", "240p", "audio"}
            seconds = await asyncio.to_thread(
                decode_rungs, f"{service.url}/vod/cafe0001", ready["renditions"]
            )
            assert all(abs(s - 6.0) <= SEGMENT for s in seconds.values()), seconds
            listing = (await api.get("/api/streams/show/recordings")).json()["recordings"]
            assert listing[0]["asset"] == "cafe0001" and listing[0]["ended"] is not None
    finally:
        await service.close()
