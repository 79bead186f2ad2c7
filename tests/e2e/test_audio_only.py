"""An audio-only RTMP publication (internet radio: ffmpeg -vn, OBS with no video source)
is playable: master.m3u8 with one audio-only variant, an MPD with the audio set alone."""

from __future__ import annotations

import pytest

from origin.service import OriginService
from tests.clients import decode, extinf_seconds, ffmpeg_publish, finished
from tests.conftest import rtmp_url, wait_for_state
from tests.e2e.test_ladder import wait_for_url

pytestmark = pytest.mark.e2e


async def test_audio_only_rtmp_is_playable_over_hls_and_dash(
    origin: OriginService, ffmpeg_cli: str
) -> None:
    key = origin.keys.create("radio")
    proc = await ffmpeg_publish(rtmp_url(origin, key), 8.0, video=False, sample_rate=48000)
    base = f"{origin.url}/live/radio"
    # Live: the manifests appear once a few seconds of audio showed there is no video.
    master = await wait_for_url(f"{base}/master.m3u8", 20)
    assert 'CODECS="mp4a.40.2"' in master.text and "audio/index.m3u8" in master.text
    assert "RESOLUTION" not in master.text
    live_mpd = await wait_for_url(f"{base}/manifest.mpd", 5)
    assert 'type="dynamic"' in live_mpd.text and 'contentType="video"' not in live_mpd.text
    assert not await finished(proc)
    await wait_for_state(origin, "radio", "ended")
    playlist = (await wait_for_url(f"{base}/audio/index.m3u8", 30, "ENDLIST")).text
    hls = await decode(f"{base}/master.m3u8")
    assert hls.video_frames == 0 and (hls.sample_rate, hls.channels) == (48000, 2)
    assert abs(hls.audio_seconds - extinf_seconds(playlist)) < 0.1
    assert hls.audio_seconds > 7.0, hls
    dash = await decode(f"{base}/manifest.mpd")
    assert dash.video_frames == 0 and abs(dash.audio_seconds - hls.audio_seconds) < 0.1, dash
