from __future__ import annotations

from fractions import Fraction

import pytest

from transcoder import encoders
from transcoder.encoders import Backend, EncoderSettings, EncoderUnavailable, select_backend
from transcoder.ladder import RungSpec, parse_ladder, plan_ladder

SETTINGS = EncoderSettings(fps=Fraction(30))


def test_1080p_source_gets_four_rungs() -> None:
    rungs = plan_ladder(1920, 1080)
    assert [(r.name, r.width, r.height) for r in rungs] == [
        ("1080p", 1920, 1080),
        ("720p", 1280, 720),
        ("480p", 854, 480),
        ("360p", 640, 360),
    ]
    assert [r.video_kbps for r in rungs] == sorted((r.video_kbps for r in rungs), reverse=True)


def test_never_upscale() -> None:
    assert [r.name for r in plan_ladder(640, 360)] == ["360p"]
    assert [r.name for r in plan_ladder(1280, 720)] == ["720p", "480p", "360p"]
    # smaller than every rung: one rung at the source size
    (only,) = plan_ladder(320, 240)
    assert (only.width, only.height) == (320, 240)


def test_portrait_source_rungs_follow_the_short_side() -> None:
    rungs = plan_ladder(1080, 1920)
    assert [(r.name, r.width, r.height) for r in rungs] == [
        ("1080p", 1080, 1920),
        ("720p", 720, 1280),
        ("480p", 480, 854),
        ("360p", 360, 640),
    ]
    assert all(r.width % 2 == 0 and r.height % 2 == 0 for r in plan_ladder(1279, 719))


def test_empty_ladder_is_an_error() -> None:
    with pytest.raises(ValueError, match="no rungs"):
        plan_ladder(640, 360, [])


def test_parse_ladder() -> None:
    assert parse_ladder("720:2800, 360p:800") == (RungSpec(720, 2800), RungSpec(360, 800))
    with pytest.raises(ValueError, match="HEIGHT:KBPS"):
        parse_ladder("720")


def nvenc_opens() -> bool:
    return encoders._probe(Backend.NVENC, plan_ladder(640, 360)[0], SETTINGS) is None


def test_auto_falls_back_to_x264_when_nvenc_does_not_open() -> None:
    rung = plan_ladder(640, 360)[0]
    chosen = select_backend("auto", rung, SETTINGS)
    # Decided by opening h264_nvenc for real: on our machines (no NVENC) that fails.
    assert chosen is (Backend.NVENC if nvenc_opens() else Backend.X264)


def test_forced_nvenc_fails_clearly_without_nvenc() -> None:
    if nvenc_opens():
        pytest.fail("this machine has NVENC: the forced-fallback assertion does not apply")
    with pytest.raises(EncoderUnavailable, match=r"cannot open encoder \(h264_nvenc: "):
        select_backend("nvenc", plan_ladder(640, 360)[0], SETTINGS)


def test_forced_x264_and_unknown_name() -> None:
    assert select_backend("x264", plan_ladder(640, 360)[0], SETTINGS) is Backend.X264
    with pytest.raises(EncoderUnavailable, match="unknown encoder 'qsv'"):
        select_backend("qsv", plan_ladder(640, 360)[0], SETTINGS)


def test_unopenable_settings_reported_with_ffmpeg_reason() -> None:
    """A rung x264 cannot open (odd width for 4:2:0) is refused with FFmpeg's reason,
    which is what the auto path relies on to move to the next backend."""
    from transcoder.ladder import Rung

    with pytest.raises(EncoderUnavailable, match="libx264"):
        select_backend("x264", Rung("bad", 641, 361, 800), SETTINGS)
