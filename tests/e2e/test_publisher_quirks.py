"""Publishers that bend the rules: repeated timestamps, and codec parameters changed in
the middle of a publication. Viewers (the ffmpeg CLI reading our HLS) must get every
frame and every second, with the renditions' inits unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from meshcast.config import OriginConfig, TranscodeConfig
from origin.service import OriginService
from tests.clients import decode, extinf_seconds, ffmpeg_publish, finished
from tests.conftest import rtmp_url, wait_for_state
from tests.e2e.test_ladder import wait_for_url
from tests.flv_replay import read_flv, replay

pytestmark = pytest.mark.e2e

# Every second packet of each track repeats the previous packet's timestamp.
DUPLICATE = "setts=ts=if(mod(N\\,2)\\,PREV_OUTDTS\\,TS)"


async def ended_playlists(origin: OriginService, name: str, rendition: str) -> tuple[str, str]:
    await wait_for_state(origin, name, "ended")
    base = f"{origin.url}/live/{name}"
    video = await wait_for_url(f"{base}/{rendition}/index.m3u8", 30, "ENDLIST")
    audio = await wait_for_url(f"{base}/audio/index.m3u8", 30, "ENDLIST")
    return video.text, audio.text


async def test_repeated_timestamps_are_retimed_not_dropped(
    origin: OriginService, ffmpeg_cli: str
) -> None:
    key = origin.keys.create("dup")
    proc = await ffmpeg_publish(
        rtmp_url(origin, key), 4.0, extra=("-bsf:v", DUPLICATE, "-bsf:a", DUPLICATE)
    )
    assert not await finished(proc)
    _, audio = await ended_playlists(origin, "dup", "240p")
    async with httpx.AsyncClient() as client:
        stream = (await client.get(f"{origin.url}/api/streams/dup")).json()
    published = stream["video"]["frames"]
    assert published >= 95  # 4 s at 25 fps, half of them with a repeated timestamp
    video = await decode(f"{origin.url}/live/dup/240p/index.m3u8")
    # Every frame the publisher sent is in the rendition (the encoder may hold back
    # none: zerolatency), spaced at the nominal 25 fps.
    assert video.video_frames >= published - 2, (video, published)
    assert abs(video.video_seconds - published / 25) < 0.2, video
    sound = await decode(f"{origin.url}/live/dup/audio/index.m3u8")
    assert abs(sound.audio_seconds - extinf_seconds(audio)) < 0.1
    assert sound.audio_seconds > 3.5, sound


async def test_codec_parameters_changed_mid_stream_keep_playing(
    origin: OriginService, tmp_path: Path
) -> None:
    """New AVC and AAC sequence headers after 3 s (320x240 44.1 kHz stereo, then 640x360
    48 kHz mono), without a republish: the ladder and the audio rendition keep their
    inits, players decode straight through the change."""
    first, second = tmp_path / "a.flv", tmp_path / "b.flv"
    for path, size, rate, channels in ((first, "320x240", 44100, 2), (second, "640x360", 48000, 1)):
        proc = await ffmpeg_publish(
            str(path), 3.0, size=size, sample_rate=rate, channels=channels, realtime=False
        )
        assert not await finished(proc)
    key = origin.keys.create("morph")
    tags = read_flv(first) + read_flv(second, shift_ms=3000)
    await replay(origin.rtmp.port, key, tags)
    video, audio = await ended_playlists(origin, "morph", "240p")
    for playlist in (video, audio):  # one init, one timeline: nothing for players to do
        assert len(re.findall("#EXT-X-MAP", playlist)) == 1
        assert "DISCONTINUITY" not in playlist
    decoded = await decode(f"{origin.url}/live/morph/240p/index.m3u8")
    assert decoded.video_frames >= 145, decoded  # 6 s at 25 fps, both halves
    sound = await decode(f"{origin.url}/live/morph/audio/index.m3u8")
    # The rendition stays 44.1 kHz stereo (its init); the 48 kHz mono half is
    # re-encoded into it, so the seconds decoded are the seconds published.
    assert (sound.sample_rate, sound.channels) == (44100, 2)
    assert abs(sound.audio_seconds - extinf_seconds(audio)) < 0.1
    assert sound.audio_seconds > 5.5, sound
    async with httpx.AsyncClient() as client:
        stream = (await client.get(f"{origin.url}/api/streams/morph")).json()
    assert stream["audio"]["sample_rate"] == 48000  # the registry saw the change


async def test_video_change_under_the_source_rung_ends_the_stream_clearly(
    tmp_path: Path,
) -> None:
    """The source rung repackages the publisher's own H.264 under one init: new video
    parameters end that publication with a reason (the publisher republishes), and its
    playlists end cleanly."""
    first, second = tmp_path / "a.flv", tmp_path / "b.flv"
    for path, size in ((first, "320x240"), (second, "640x360")):
        assert not await finished(await ffmpeg_publish(str(path), 3.0, size=size, realtime=False))
    config = OriginConfig(
        data_dir=tmp_path / "origin",
        http_port=0,
        rtmp_port=0,
        transcode=TranscodeConfig(source_rung=True),
    )
    origin = OriginService(config)
    await origin.start()
    try:
        key = origin.keys.create("srcrung")
        sent = await replay(origin.rtmp.port, key, read_flv(first) + read_flv(second, 3000))
        ended = await wait_for_state(origin, "srcrung", "ended")
        assert "republish" in (ended["end_reason"] or ""), ended
        assert b"NetStream.Unpublish.Success" in sent and b"republish" in sent
        await wait_for_url(f"{origin.url}/live/srcrung/source/index.m3u8", 30, "ENDLIST")
        decoded = await decode(f"{origin.url}/live/srcrung/240p/index.m3u8")
        assert decoded.video_frames >= 2 * 25, decoded  # the first publication's part
    finally:
        await origin.close()
