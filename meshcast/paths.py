"""URL naming shared by origin, edges, transcoder and player (DESIGN.md contract)."""

from __future__ import annotations

import re
from dataclasses import dataclass
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


def vod_urls(base: str, asset: str) -> dict[str, str]:
    return {
        "hls": f"{base}{VOD_PREFIX}/{asset}/master.m3u8",
        "dash": f"{base}{VOD_PREFIX}/{asset}/manifest.mpd",
        "player": f"{base}/player/?vod={asset}",
        "poster": f"{base}{VOD_PREFIX}/{asset}/poster.jpg",
        "thumbnails": f"{base}{VOD_PREFIX}/{asset}/thumbnails.vtt",
    }


# ---- media paths: /live/NAME/... and /vod/ASSET/... ------------------------------------
# The packager fixes every file name, so anything else is a 404 without touching a disk or
# an upstream. This whitelist is also the path-traversal guard (no "..", "%2e", NUL, "//").
_MEDIA_PATH = re.compile(
    r"/(?P<kind>live|vod)/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})/"
    r"(?:(?P<top>master\.m3u8|manifest\.mpd|poster\.jpg|thumbnails\.(?:jpg|vtt))|"
    r"(?P<rendition>[0-9]{2,4}p|audio|source|captions)/"
    r"(?P<file>index\.m3u8|init(?:-[0-9]{1,16})?\.mp4|[0-9]{1,12}\.(?:m4s|vtt)))"
)
_CONTENT_TYPES: Final = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".vtt": "text/vtt",
    ".jpg": "image/jpeg",
}
# Files only a VOD asset has (the seek-bar sprite); a live stream's poster.jpg is its
# current picture (origin/posters.py).
_VOD_ONLY: Final = frozenset({"thumbnails.jpg", "thumbnails.vtt"})
IMMUTABLE: Final = "public, max-age=31536000, immutable"
# A live rendition's init.mp4 is rewritten by every publication of the name (and a new
# publication may change codec parameters): caches must ask again within a second, like
# for a live playlist. Playlists and MPDs reference the publication's own, immutable
# init-TAG.mp4 instead (see ``versioned_init``), so players never mix inits.
MUTABLE_INIT: Final = "public, max-age=1"
LATEST_INIT: Final = "init.mp4"


def versioned_init(tag: int) -> str:
    """File name of one publication's init segment: never rewritten with other bytes."""
    return f"init-{tag}.mp4"


@dataclass(frozen=True, slots=True)
class MediaPath:
    kind: str  # "live" | "vod"
    name: str
    relative: str  # path below /KIND/NAME/
    rendition: str | None

    @property
    def suffix(self) -> str:
        return self.relative[self.relative.rindex(".") :]

    @property
    def is_manifest(self) -> bool:
        return self.suffix in (".m3u8", ".mpd")

    @property
    def is_latest_init(self) -> bool:
        """``RENDITION/init.mp4`` of a live stream: the one media file that changes."""
        return self.kind == "live" and self.relative.endswith("/" + LATEST_INIT)

    @property
    def content_type(self) -> str:
        if self.rendition == "audio" and self.suffix in (".mp4", ".m4s"):
            return "audio/mp4"
        return _CONTENT_TYPES[self.suffix]


def parse_media_path(path: str) -> MediaPath | None:
    """The contract's media paths, or None for anything else."""
    if (match := _MEDIA_PATH.fullmatch(path)) is None or ".." in path:
        return None
    if match["kind"] == "live" and match["top"] in _VOD_ONLY:
        return None
    relative = match["top"] or f"{match['rendition']}/{match['file']}"
    return MediaPath(match["kind"], match["name"], relative, match["rendition"])
