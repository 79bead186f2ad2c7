"""WHIP ingest against real WebRTC peers: FFmpeg 8.1's own ``whip`` muxer (libavformat via
PyAV, in a child process) and an aiortc RTCPeerConnection as the publisher; the resulting
HLS is decoded with libavformat."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshcast.config import OriginConfig, WhipConfig
from meshcast.keys import KeyStore
from origin.service import OriginService
from tests.conftest import stream_json, wait_for_state
from tests.e2e.test_ladder import wait_for_url
from tests.whip_client import PatternTrack, make_offer, publish

pytestmark = pytest.mark.e2e

SDP = {"Content-Type": "application/sdp"}


def whip_url(origin: OriginService, name: str) -> str:
    return f"{origin.url}/whip/{name}"


async def ffmpeg_whip_push(url: str, key: str, seconds: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.whip_publisher",
        url,
        key,
        str(seconds),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def decode_hls(url: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.hls_decode",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out)
    return result


async def check_ended_hls(origin: OriginService, name: str) -> dict[str, dict[str, Any]]:
    """The ended stream's playlists carry ENDLIST; every rendition decodes."""
    master = (await wait_for_url(f"{origin.url}/live/{name}/master.m3u8")).text
    renditions = re.findall(r"^(\w+)/index\.m3u8$", master, re.M)
    renditions += re.findall(r'URI="(\w+)/index\.m3u8"', master)
    assert "audio" in renditions, master
    decoded = {}
    for rendition in renditions:
        url = f"{origin.url}/live/{name}/{rendition}/index.m3u8"
        await wait_for_url(url, contains="#EXT-X-ENDLIST")
        decoded[rendition] = await decode_hls(url)
    return decoded


async def test_ffmpeg_whip_muxer_publishes_h264_opus(origin: OriginService, keys: KeyStore) -> None:
    key = keys.create("ffwhip")
    proc = await ffmpeg_whip_push(whip_url(origin, "ffwhip"), key, 6.0)
    live = await wait_for_state(origin, "ffwhip", "live", within=20)
    assert live["protocol"] == "whip"
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    # The muxer DELETEs its session when it closes: the stream ends at once.
    ended = await wait_for_state(origin, "ffwhip", "ended", within=10)
    assert ended["end_reason"] == "publisher sent DELETE"
    video, audio = ended["video"], ended["audio"]
    assert video["codec"] == "h264" and (video["width"], video["height"]) == (320, 240)
    assert video["profile"] == "Constrained Baseline"
    assert abs(video["frames"] - 180) <= 9, video  # 6 s at 30 fps, 5 %
    assert abs(video["fps"] - 30) < 1.5, video
    assert audio["codec"] == "opus" and audio["sample_rate"] == 48000
    assert abs(audio["frames"] - 300) <= 15, audio  # 6 s of 20 ms packets
    decoded = await check_ended_hls(origin, "ffwhip")
    rung = decoded["240p"]["video"]
    assert rung["codec"] == "h264" and (rung["width"], rung["height"]) == (320, 240)
    assert rung["frames"] >= 170, decoded
    sound = decoded["audio"]["audio"]
    assert sound["codec"] == "aac" and sound["sample_rate"] == 48000
    assert sound["seconds"] > 5.0, decoded


async def test_aiortc_publishes_vp8_opus_with_a_freeze(
    origin: OriginService, keys: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="origin.whip")
    key = keys.create("rtcvp8")
    # 1.5 s without frames after 2 s: logged as a freeze, the stream keeps going.
    track = PatternTrack(pause_at=60, pause_for=1.5)
    client = await publish(whip_url(origin, "rtcvp8"), key, "VP8", video=track)
    try:
        assert re.fullmatch(r"/whip/rtcvp8/[\w-]{32}", client.location), client.location
        live = await wait_for_state(origin, "rtcvp8", "live")
        assert live["protocol"] == "whip"
        # A second publisher for the live name is refused with 409, the first goes on.
        async with httpx.AsyncClient(base_url=origin.url, timeout=30) as http:
            dup = await http.post(
                "/whip/rtcvp8",
                content=client.pc.localDescription.sdp,
                headers={**SDP, "Authorization": f"Bearer {key}"},
            )
            assert dup.status_code == 409 and "already live" in dup.json()["error"]
            while track.sent < 150:
                await asyncio.sleep(0.1)
            deleted = await http.delete(client.location)
            assert deleted.status_code == 200
            again = await http.delete(client.location)
            assert again.status_code == 404
    finally:
        await client.pc.close()
    ended = await wait_for_state(origin, "rtcvp8", "ended", within=5)
    assert ended["end_reason"] == "publisher sent DELETE"
    video = ended["video"]
    assert video["codec"] == "vp8" and (video["width"], video["height"]) == (320, 240)
    assert video["frames"] >= 140, video
    assert ended["audio"]["codec"] == "opus" and ended["audio"]["frames"] > 150
    assert "video freeze" in caplog.text and "video resumed after" in caplog.text
    decoded = await check_ended_hls(origin, "rtcvp8")
    rung = decoded["240p"]["video"]
    assert rung["codec"] == "h264" and rung["frames"] >= 130, decoded
    # the freeze is in the media timeline, not dropped: ~5 s of video incl. the pause
    assert rung["seconds"] > 4.5, decoded
    assert decoded["audio"]["audio"]["codec"] == "aac"


async def test_aiortc_publishes_h264(origin: OriginService, keys: KeyStore) -> None:
    key = keys.create("rtch264")
    client = await publish(whip_url(origin, "rtch264"), key, "H264")
    try:
        await wait_for_state(origin, "rtch264", "live")
        while client.video is not None and client.video.sent < 90:
            await asyncio.sleep(0.1)
    finally:
        await client.pc.close()  # DTLS close_notify, no DELETE: the connection closes
    ended = await wait_for_state(origin, "rtch264", "ended", within=10)
    assert ended["end_reason"] == "WebRTC connection closed"
    assert ended["video"]["codec"] == "h264" and ended["video"]["frames"] >= 80
    decoded = await check_ended_hls(origin, "rtch264")
    assert decoded["240p"]["video"]["frames"] >= 70


@pytest.fixture
async def short_idle_origin(tmp_path: Path) -> AsyncIterator[OriginService]:
    service = OriginService(
        OriginConfig(
            data_dir=tmp_path,
            http_port=0,
            rtmp_port=0,
            whip=WhipConfig(idle_timeout=2.0, ice_servers=("stun:stun.example.net:3478",)),
        )
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def test_abandoned_session_ends_after_idle_timeout(short_idle_origin: OriginService) -> None:
    origin = short_idle_origin
    key = origin.keys.create("ghost")
    # The publisher posts its offer and never uses the answer: ICE never completes.
    pc, _ = await make_offer("VP8")
    try:
        async with httpx.AsyncClient(base_url=origin.url, timeout=30) as http:
            created = await http.post(
                "/whip/ghost",
                content=pc.localDescription.sdp,
                headers={**SDP, "Authorization": f"Bearer {key}"},
            )
            assert created.status_code == 201, created.text
            assert created.headers["content-type"].startswith("application/sdp")
            assert created.text.startswith("v=0") and "a=candidate:" in created.text
            assert created.headers.get_list("link") == [
                '<stun:stun.example.net:3478>; rel="ice-server"'
            ]
            location = created.headers["location"]
            await wait_for_state(origin, "ghost", "live", within=2)
            patched = await http.patch(
                location,
                content=b"a=ice-ufrag:x",
                headers={"Content-Type": "application/trickle-ice-sdpfrag"},
            )
            assert patched.status_code == 405 and patched.headers["allow"] == "DELETE, OPTIONS"
            ended = await wait_for_state(origin, "ghost", "ended", within=8)
            assert ended["end_reason"] == "abandoned: no media within 2 s"
            assert (await http.delete(location)).status_code == 404
            assert origin.whip.sessions == {}
    finally:
        await pc.close()


async def test_killed_publisher_is_dropped_and_the_stream_ends(
    short_idle_origin: OriginService,
) -> None:
    """FFmpeg killed mid-stream: no DELETE, no DTLS close_notify, just silence. The idle
    timeout (2 s here) ends the stream; its playlists get ENDLIST and still decode."""
    origin = short_idle_origin
    key = origin.keys.create("vanish")
    proc = await ffmpeg_whip_push(whip_url(origin, "vanish"), key, 30.0)
    try:
        await wait_for_state(origin, "vanish", "live", within=20)
        while True:
            stream = await stream_json(origin, "vanish")
            assert stream is not None and stream["state"] == "live", stream
            if stream["video"] and stream["video"]["duration"] >= 3.0:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.kill()
        await proc.wait()
    ended = await wait_for_state(origin, "vanish", "ended", within=8)
    assert ended["end_reason"] == "abandoned: no media since 2 s"
    decoded = await check_ended_hls(origin, "vanish")
    assert decoded["240p"]["video"]["frames"] >= 60, decoded
    assert origin.whip.sessions == {}


async def test_bad_requests_are_refused_with_reasons(short_idle_origin: OriginService) -> None:
    origin = short_idle_origin
    keys = origin.keys
    key = keys.create("cam")
    other = keys.create("other")
    revoked = keys.create("gone")
    keys.revoke("gone")
    pc, _ = await make_offer("VP8")
    audio_only, _ = await make_offer(None)
    offer = pc.localDescription.sdp
    try:
        async with httpx.AsyncClient(base_url=origin.url, timeout=30) as http:

            async def post(
                name: str, body: str | bytes, token: str | None = key, **headers: str
            ) -> httpx.Response:
                h = {**SDP, **headers}
                if token is not None:
                    h["Authorization"] = f"Bearer {token}"
                return await http.post(f"/whip/{name}", content=body, headers=h)

            r = await post("cam", offer, token=None)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in r.json()["error"]
            r = await post("cam", offer, token="stream_000000000000_nope")
            assert r.status_code == 401 and "unknown stream key" in r.json()["error"]
            r = await post("gone", offer, token=revoked)
            assert r.status_code == 401 and "was revoked" in r.json()["error"]
            r = await post("cam", offer, token=other)
            assert r.status_code == 401 and "the key is for stream 'other'" in r.json()["error"]
            r = await post("cam", offer, **{"Content-Type": "text/plain"})
            assert r.status_code == 415
            r = await post("cam", "v=0\r\n" + "a=x\r\n" * 20000)
            assert r.status_code == 413
            r = await post("cam", "hello")
            assert r.status_code == 400 and "first line must be 'v=0'" in r.json()["error"]
            r = await post("cam", offer.replace("a=ice-ufrag", "garbage ice-ufrag", 1))
            assert r.status_code == 400 and "not a 'type=value' SDP line" in r.json()["error"]
            r = await post("cam", re.sub(r"a=fingerprint:.*\r\n", "", offer))
            assert r.status_code == 400 and "no DTLS fingerprint" in r.json()["error"]
            r = await post("cam", audio_only.localDescription.sdp)
            assert r.status_code == 400 and "no video" in r.json()["error"]
            r = await post("cam", b"\xff\xfe")
            assert r.status_code == 400 and "not UTF-8" in r.json()["error"]
            r = await http.get("/whip/cam")
            assert r.status_code == 405
            # Plain OPTIONS (RFC 9725 4.4) and a browser's CORS preflight.
            r = await http.options("/whip/cam")
            assert r.status_code == 204 and r.headers["accept-post"] == "application/sdp"
            assert r.headers["access-control-allow-origin"] == "*"
            assert "Location" in r.headers["access-control-expose-headers"]
            assert r.headers.get_list("link") == ['<stun:stun.example.net:3478>; rel="ice-server"']
            r = await http.options(
                "/whip/cam",
                headers={
                    "Origin": "http://other.example",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert r.status_code == 200, r.text
            assert "POST" in r.headers["access-control-allow-methods"]
            assert "authorization" in r.headers["access-control-allow-headers"].lower()
            r = await http.patch("/whip/cam/nosuchsession")
            assert r.status_code == 404
        for name in ("cam", "other", "gone"):
            assert await stream_json(origin, name) is None
        assert origin.whip.sessions == {}
    finally:
        await pc.close()
        await audio_only.close()
