"""Golden captures: a real ffmpeg 5.1 publish and an OBS-like command sequence, fed to the
sans-IO core whole, one byte at a time, in random splits, with trailing bytes, and
mutated (truncated/corrupted), as h11's tests do."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from origin import flv
from origin.rtmp_chunk import MessageType
from origin.rtmp_protocol import (
    HANDSHAKE_SIZE,
    ConnectRequest,
    MediaMessage,
    PublishRequest,
    RtmpProtocolError,
    StreamMetadata,
    UnpublishRequest,
)
from tests.unit.test_rtmp_protocol import full_session, run_session

FIXTURES = Path(__file__).parent.parent / "fixtures"
FFMPEG = (FIXTURES / "ffmpeg51_publish.bin").read_bytes()
FFMPEG_KEY = (FIXTURES / "ffmpeg51_publish.key").read_text().strip()
OBS = FIXTURES / "obs_like_publish.bin"


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def test_obs_like_golden_is_what_the_scripted_publisher_sends() -> None:
    # Regenerate with: python -c "from tests.unit.test_rtmp_protocol import full_session;
    # open('tests/fixtures/obs_like_publish.bin','wb').write(full_session())"
    assert OBS.read_bytes() == full_session()


def test_ffmpeg_capture_parses_to_a_complete_publish() -> None:
    _, events = run_session([FFMPEG])
    connect = next(e for e in events if isinstance(e, ConnectRequest))
    assert connect.app == "live"
    assert connect.properties["flashVer"].startswith("FMLE/3.0")
    publish = next(e for e in events if isinstance(e, PublishRequest))
    assert publish.stream_key == FFMPEG_KEY
    meta = next(e for e in events if isinstance(e, StreamMetadata))
    assert meta.metadata["width"] == 64.0
    media = [e for e in events if isinstance(e, MediaMessage)]
    video = [flv.parse_video_tag(m.payload, m.timestamp) for m in media if m.kind == 9]
    frames = [v for v in video if v is not None and not hasattr(v, "codec")]
    assert len(frames) == 5  # 0.5 s at 10 fps
    assert any(m.kind is MessageType.AUDIO for m in media)
    assert isinstance(events[-1], UnpublishRequest)


@pytest.mark.parametrize("capture", [FFMPEG, OBS.read_bytes()], ids=["ffmpeg51", "obs_like"])
def test_capture_whole_bytewise_random_and_trailing(capture: bytes) -> None:
    _, whole = run_session([capture])
    _, bytewise = run_session([capture[i : i + 1] for i in range(len(capture))])
    rnd = random.Random(len(capture))
    cuts = sorted(rnd.sample(range(1, len(capture)), 50))
    _, split = run_session(
        [capture[a:b] for a, b in zip([0, *cuts], [*cuts, len(capture)], strict=True)]
    )
    # trailing: the first bytes of a following chunk must wait, not error or emit
    _, trailing = run_session([capture + b"\x43\x00\x00"])
    assert kinds(whole) == kinds(bytewise) == kinds(split) == kinds(trailing)
    assert [getattr(e, "payload", None) for e in whole] == [
        getattr(e, "payload", None) for e in bytewise
    ]


def test_truncated_capture_never_errors_only_stops() -> None:
    step = 97
    for cut in range(0, len(FFMPEG), step):
        _, events = run_session([FFMPEG[:cut]])
        assert len(events) <= len(run_session([FFMPEG])[1])


def test_corrupted_capture_fails_cleanly() -> None:
    rnd = random.Random(3)
    start = 1 + 2 * HANDSHAKE_SIZE
    errors = 0
    for _ in range(300):
        data = bytearray(FFMPEG)
        for _ in range(4):
            data[rnd.randrange(start, len(data))] = rnd.randrange(256)
        try:
            run_session([bytes(data)])
        except RtmpProtocolError:
            errors += 1
    assert errors > 0  # corruption is noticed at least sometimes, and never crashes
