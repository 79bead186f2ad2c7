"""Edge plugin plumbing without a mesh: discovery, options, WebVTT and manifest rewrites."""

from __future__ import annotations

import ast
import asyncio
import tomllib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from edge.app import Edge, create_app
from edge.plugins import (
    BUILTIN,
    ENTRY_POINT_GROUP,
    NetworkMembership,
    PluginContext,
    PluginOptionError,
    PluginOptions,
    UnknownPlugin,
    asr,
    find_plugin,
    nsfw,
)
from edge.plugins.assets import OwnedAssets
from edge.plugins.captions import CaptionsPlugin, commit_segment
from edge.plugins.live import parse_media_playlist
from edge.plugins.moderation import ModerationConfig, ModerationPlugin, lowest_rendition
from edge.plugins.webvtt import (
    Word,
    add_dash_captions,
    add_hls_subtitles,
    committed,
    group_cues,
    parse_vtt,
    timestamp,
    vtt_segment,
)
from meshcast.cli import main
from meshcast.config import EdgeConfig
from transcoder import dash, hls
from transcoder.fmp4 import TrackSpec
from transcoder.segments import RenditionState

ROOT = Path(__file__).resolve().parents[2]


def edge_with(tmp_path: Path, *plugins: str, options: tuple[str, ...] = ()) -> Edge:
    return Edge(
        EdgeConfig(
            origin="http://127.0.0.1:9",
            cache_dir=tmp_path / "edge",
            plugins=plugins,
            plugin_options=options,
        )
    )


async def test_pyproject_declares_every_shipped_plugin_and_they_load(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][ENTRY_POINT_GROUP]
    assert declared == BUILTIN
    for target in declared.values():
        module = target.partition(":")[0].replace(".", "/")
        assert (ROOT / f"{module}.py").is_file() or (ROOT / module / "__init__.py").is_file()
    for name in ("captions", "moderation"):
        assert find_plugin(name) is not None
    edge = edge_with(tmp_path, "captions", "moderation", options=("captions.context=1",))
    try:
        captions, moderation = edge.plugins
        assert isinstance(captions, CaptionsPlugin) and captions.config.context == 1
        assert isinstance(moderation, ModerationPlugin)
        assert edge.hooks.filters and edge.hooks.transforms("/live/a/master.m3u8")
    finally:
        await edge.close()


def test_unknown_plugin_and_bad_options_fail_clearly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(UnknownPlugin, match=r"unknown edge plugin 'nope'.*captions"):
        edge_with(tmp_path, "nope")
    with pytest.raises(PluginOptionError, match=r"not PLUGIN\.KEY=VALUE"):
        PluginOptions.parse(["captions=1"])
    with pytest.raises(PluginOptionError, match="not enabled: moderation"):
        edge_with(tmp_path, "captions", options=("moderation.policy=a:block",))
    with pytest.raises(PluginOptionError, match="policy 'ban'"):
        ModerationConfig.from_context(PluginContext({"policy": ["a:ban"]}))
    assert not (tmp_path / "edge").exists()  # refused before touching anything
    # The CLI turns it into one line on stderr and a non-zero exit.
    code = main(
        ["edge", "--origin", "http://127.0.0.1:9", "--port", "0", "--plugin", "nope",
         "--cache-dir", str(tmp_path / "edge")]
    )  # fmt: skip
    assert code == 1
    assert "unknown edge plugin 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "edge").exists()


def _host_members() -> set[str]:
    tree = ast.parse((ROOT / "edge/plugins/host.py").read_text())
    host = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EdgeHost")
    members = {n.name for n in host.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    members |= {
        n.target.id
        for n in host.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    return members


# How the plugins name the host they are given (a parameter or an attribute of self).
_HOST_NAMES = frozenset({"edge", "_edge", "host", "_host"})


def _is_host(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _HOST_NAMES
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr in _HOST_NAMES
    )


def test_plugins_see_the_edge_only_through_the_host_protocol() -> None:
    """No module under edge/plugins/ imports edge/app.py (the import cycle it made) or takes
    from the edge anything but a member of EdgeHost: never a private attribute."""
    members = _host_members()
    assert {"fetch", "respond", "add_routes", "bus", "registry", "config"} <= members
    problems: list[str] = []
    files = sorted((ROOT / "edge/plugins").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            imported: set[str] = set()
            if isinstance(node, ast.Import):
                imported = {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                imported = {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            if "edge.app" in imported:
                problems.append(f"{where}:{node.lineno}: imports edge.app")
            if (
                isinstance(node, ast.Attribute)
                and _is_host(node.value)
                and (node.attr.startswith("_") or node.attr not in members)
            ):
                problems.append(f"{where}:{node.lineno}: host.{node.attr} is not in EdgeHost")
    assert not problems, "\n".join(problems)


def test_the_static_check_sees_a_private_access() -> None:
    """The check above can fail: the access pins.py used to make is caught."""
    tree = ast.parse("self.edge._respond(request, cached, 'HIT')\nedge.cache.memory.remove(k)")
    caught = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and _is_host(n.value)]
    assert caught == ["_respond", "cache"] and not {"_respond", "cache"} & _host_members()


async def test_routes_are_added_before_the_app_is_built(tmp_path: Path) -> None:
    edge = edge_with(tmp_path)
    try:
        edge.add_routes([Route("/_extra", lambda request: PlainTextResponse("extra"))])
        app = create_app(edge)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            assert (await client.get("/_extra")).text == "extra"
            # Not joined: no membership to show.
            assert (await client.get("/api/network")).status_code == 404
            edge.network = NetworkMembership("n1", "http://coordinator")
            assert (await client.get("/api/network")).json() == {
                "node": "n1",
                "coordinator": "http://coordinator",
            }
        with pytest.raises(RuntimeError, match="before the edge's app is built"):
            edge.add_routes([Route("/_late", lambda request: PlainTextResponse("late"))])
    finally:
        await edge.close()


async def test_owned_assets_run_one_job_per_asset_and_nudge_the_owner(tmp_path: Path) -> None:
    """VOD jobs on first demand (captions, moderation): one job per asset at its owner,
    a failure waits retry_s, finished results are kept LRU; other edges nudge the owner at
    most once per nudge_s."""
    peer = "http://127.0.0.1:9"
    edge = Edge(EdgeConfig(origin=peer, cache_dir=tmp_path / "edge", peers=(peer,)))
    ran: list[tuple[str, str | None]] = []
    nudged: list[tuple[str, str, str | None]] = []
    gate = asyncio.Event()

    async def work(asset: str, value: list[str], token: str | None) -> None:
        ran.append((asset, token))
        await gate.wait()
        if asset.startswith("bad"):
            raise LookupError(f"{asset} is not there")
        value.append(asset)

    async def nudge(owner: str, asset: str, token: str | None) -> None:
        nudged.append((owner, asset, token))

    assets = OwnedAssets(edge, "test", list, work, nudge, keep=2, retry_s=60, nudge_s=30)
    mine = [f"a{i}" for i in range(40) if assets.owns(f"a{i}")]
    theirs = next(f"a{i}" for i in range(40) if not assets.owns(f"a{i}"))
    bad = next(f"bad{i}" for i in range(40) if assets.owns(f"bad{i}"))
    try:
        assets.demand(mine[0], "t1")
        assets.demand(mine[0], "t2")  # running: not again
        job = assets.get(mine[0])
        assert job is not None and job.state == "running" and assets.done(mine[0]) is None
        assets.demand(bad, None)
        gate.set()
        await asyncio.sleep(0.01)
        assert ran == [(mine[0], "t1"), (bad, None)]
        assert assets.done(mine[0]) == [mine[0]]
        failed = assets.get(bad)
        assert failed is not None and failed.state == "failed"
        assert failed.error == f"{bad} is not there"
        assets.demand(bad, None)  # within retry_s: not retried
        assets.demand(mine[0], None)  # done: kept, not redone
        for asset in mine[1:3]:
            assets.demand(asset, None)
        await asyncio.sleep(0.01)
        assert [a for a, _ in ran] == [mine[0], bad, *mine[1:3]]
        assert assets.get(mine[0]) is None  # least recently asked for: evicted (keep=2)
        assert assets.done(mine[2]) == [mine[2]]
        for _ in range(3):
            assets.demand(theirs, "t3")
        assets.demand(theirs, "t4", nudge=False)
        await asyncio.sleep(0.01)
        assert nudged == [(peer, theirs, "t3")] and assets.get(theirs) is None
    finally:
        await assets.close()
        await edge.close()


def test_moderation_policies_per_stream() -> None:
    options = PluginOptions.parse(
        [
            "moderation.policy=a:block",
            "moderation.policy=b.c:blur-poster",
            "moderation.default_policy=log",
            "moderation.labels=X,Y",
        ]
    )
    config = ModerationConfig.from_context(options.context("moderation"))
    assert config.policy("a") == "block" and config.policy("b.c") == "blur-poster"
    assert config.policy("other") == "log" and config.labels == ("X", "Y")


async def test_block_answers_451_only_for_the_blocked_stream(tmp_path: Path) -> None:
    edge = edge_with(tmp_path, "moderation")
    try:
        plugin = edge.plugins[0]
        assert isinstance(plugin, ModerationPlugin)
        assert edge.hooks.check("/live/a/360p/1.m4s") is None
        plugin.block("a", [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9, "box": [0, 0, 1, 1]}])
        refused = edge.hooks.check("/live/a/360p/1.m4s")
        assert refused is not None and refused.status_code == 451
        assert b'"unavailable for legal reasons"' in bytes(refused.body)
        assert edge.hooks.check("/live/ab/360p/1.m4s") is None
        assert edge.hooks.check("/live/b/master.m3u8") is None
    finally:
        await edge.close()


async def test_blur_poster_withholds_the_raw_live_poster(tmp_path: Path) -> None:
    edge = edge_with(tmp_path, "moderation", options=("moderation.policy=hot:blur-poster",))
    try:
        withheld = edge.hooks.check("/live/hot/poster.jpg")
        assert withheld is not None and withheld.status_code == 404
        assert b"/api/moderation/hot/poster.jpg" in bytes(withheld.body)
        assert edge.hooks.check("/live/hot/360p/1.m4s") is None  # the stream itself plays
        assert edge.hooks.check("/live/calm/poster.jpg") is None  # policy log: as is
    finally:
        await edge.close()


def test_committed_words_partition_overlapping_windows() -> None:
    words = [Word(t, t + 0.3, f"w{t}") for t in (1.0, 1.6, 1.9, 2.2, 3.7, 3.8)]
    first = committed(words, 0.0, 1.5)
    second = committed(words, 1.5, 3.5)
    last = committed(words, 3.5, None)
    assert [w.text for w in first + second + last] == [w.text for w in words]


def test_cues_and_vtt_round_trip() -> None:
    words = [Word(10.0, 10.3, " hello"), Word(10.4, 10.8, " world"), Word(12.5, 13.0, " again")]
    cues = group_cues(words)
    assert [c.text for c in cues] == ["hello world", "again"]
    body = vtt_segment(cues, 9.5).decode()
    assert body.startswith("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:855000,LOCAL:00:00:09.500\n")
    local, parsed = parse_vtt(body)
    assert local == 9.5
    assert [(c.start, c.end, c.text) for c in parsed] == [
        (10.0, 10.8, "hello world"),
        (12.5, 13.0, "again"),
    ]
    assert timestamp(3723.456) == "01:02:03.456"
    # Cue text cannot end its timing line or the cue.
    tricky = vtt_segment(group_cues([Word(0, 1, "a --> b\nc")]), 0).decode()
    assert tricky.rstrip().splitlines()[-1] == "a -> b c"


def _renditions() -> tuple[RenditionState, RenditionState]:
    from fractions import Fraction

    video = RenditionState(
        "360p", TrackSpec(1, "video", 90000, b"", width=640, height=360),
        "avc1.64001e", Fraction(2), 0.0, 25.0, 10,
    )  # fmt: skip
    audio = RenditionState(
        "audio", TrackSpec(2, "audio", 48000, b"", sample_rate=48000, channels=2),
        "mp4a.40.2", Fraction(2), 0.0, 0.0, 10,
    )  # fmt: skip
    for t in range(0, 6 * 90000, 3600):
        video.add(t, t, b"x" * 100, t % 180000 == 0)
    for t in range(0, 6 * 48000, 1024):
        audio.add(t, t, b"a" * 20, True)
    return video, audio


def test_manifest_rewrites_are_idempotent_and_point_at_captions() -> None:
    video, audio = _renditions()
    master = hls.master_playlist([video], audio)
    rewritten = add_hls_subtitles(master)
    assert add_hls_subtitles(rewritten) == rewritten
    lines = rewritten.splitlines()
    media = [line for line in lines if "TYPE=SUBTITLES" in line]
    assert len(media) == 1 and 'URI="captions/index.m3u8"' in media[0]
    assert all('SUBTITLES="subs"' in line for line in lines if line.startswith("#EXT-X-STREAM-INF"))
    assert lowest_rendition(rewritten) == "360p"
    mpd = dash.mpd(
        [video], audio, availability_start=0.0, segment_duration=2.0, window=6,
        ended=False, now=10.0,
    )  # fmt: skip
    with_text = add_dash_captions(mpd)
    assert add_dash_captions(with_text) == with_text
    assert with_text.count('contentType="text"') == 1
    assert 'media="$RepresentationID$/$Number$.vtt"' in with_text
    assert '<Representation id="captions"' in with_text
    audio_timeline = mpd.split('contentType="audio"')[1].split("<SegmentTimeline>")[1]
    assert audio_timeline.split("</SegmentTimeline>")[0] in with_text.split('contentType="text"')[1]


def test_media_playlist_parse() -> None:
    text = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n"
        "#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:00.000Z\n#EXTINF:2.00000,\n7.m4s\n"
        "#EXTINF:1.50000,\n8.m4s\n#EXT-X-ENDLIST\n"
    )
    playlist = parse_media_playlist(text)
    assert playlist.ended and playlist.target_duration == 2
    assert [(e.number, e.duration) for e in playlist.entries] == [(7, 2.0), (8, 1.5)]
    assert playlist.entries[0].program_date_time == "2026-01-01T00:00:00.000Z"
    assert playlist.entries[1].program_date_time is None


def test_blurred_poster_keeps_no_detail() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    sharp = cv2.imdecode(np.frombuffer(nsfw.poster(image, blur=False), np.uint8), 1)
    blurred = cv2.imdecode(np.frombuffer(nsfw.poster(image, blur=True), np.uint8), 1)
    assert sharp.shape == blurred.shape == (180, 320, 3)
    detail = [
        cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
        for x in (sharp, blurred)
    ]
    assert detail[1] < detail[0] / 100, detail


async def test_vod_captions_route_to_the_owner_of_the_asset_and_rewrite_its_manifests(
    tmp_path: Path,
) -> None:
    edge = edge_with(tmp_path, "captions")
    try:
        plugin = edge.plugins[0]
        assert isinstance(plugin, CaptionsPlugin)
        assert edge.hooks.upstream("/vod/a1/captions/index.m3u8") == edge.ring.owner("vod:a1")
        assert edge.hooks.upstream("/vod/a1/audio/0.m4s") is None
        video, audio = _renditions()
        master = hls.master_playlist([video], audio).encode()
        assert b"TYPE=SUBTITLES" in plugin.transform("/vod/a1/master.m3u8", master)
    finally:
        await edge.close()


def test_commit_segment_cuts_a_whole_transcript_per_segment() -> None:
    words = tuple(Word(t, t + 0.3, f"w{t}") for t in (0.5, 1.8, 2.4, 3.9, 5.0))
    transcript = asr.Transcript(((0.0, 2.0), (2.0, 4.0), (4.0, 6.0)), words)
    lower: float | None = None
    texts = []
    for i in range(3):
        start, cues, lower, end = commit_segment(transcript, i, lower, i == 2, margin=0.5)
        assert (start, end) == transcript.spans[i]
        texts.append([c.text for c in cues])
    # Words starting in the last margin of a segment go to the next one; each word once.
    assert texts == [["w0.5"], ["w1.8 w2.4"], ["w3.9 w5.0"]]
