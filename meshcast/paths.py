"""URL naming shared by origin, edges, transcoder and player (DESIGN.md contract)."""

from __future__ import annotations

from typing import Final

LIVE_PREFIX: Final = "/live"
VOD_PREFIX: Final = "/vod"
RTMP_APP: Final = "live"


def rtmp_publish_url(host: str, port: int) -> str:
    return f"rtmp://{host}:{port}/{RTMP_APP}"


def master_playlist(name: str) -> str:
    return f"{LIVE_PREFIX}/{name}/master.m3u8"


def dash_manifest(name: str) -> str:
    return f"{LIVE_PREFIX}/{name}/manifest.mpd"


def player_url(base: str, stream: str) -> str:
    return f"{base}/player/?stream={stream}"
