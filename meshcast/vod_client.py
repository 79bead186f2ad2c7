"""``meshcast vod add``: a tus 1.0 client with a progress bar that resumes interrupted
uploads, then follows the transcode until the asset is ready."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import httpx

from meshcast.files import atomic_write
from meshcast.tus import OFFSET_CONTENT_TYPE, TUS_VERSION, encode_metadata

CHUNK: Final = 8 * 1024 * 1024
RETRIES: Final = 8


class UploadError(Exception):
    """The upload or the transcode did not succeed; the message is the reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        # A conflicting offset or a server hiccup heals by asking HEAD; a refused key
        # or a too-large file does not.
        return self.status is None or self.status in (409, 423) or self.status >= 500


@dataclass(frozen=True, slots=True)
class AddOptions:
    file: Path
    origin: str
    key: str
    resume: str | None = None
    chunk_size: int = CHUNK
    wait: bool = True
    poll_s: float = 0.5


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meshcast" / "uploads.json"


def _cache_key(file: Path, origin: str) -> str:
    # Same path, size and mtime: the same bytes, so a half-done upload of it can resume.
    st = file.stat()
    return f"{origin}|{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _cache_load() -> dict[str, str]:
    try:
        data = json.loads(_cache_file().read_text())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cache_store(key: str, location: str | None) -> None:
    entries = _cache_load()
    if location is None:
        entries.pop(key, None)
    else:
        entries[key] = location
    atomic_write(_cache_file(), json.dumps(entries, indent=1).encode())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class ProgressBar:
    """One ``\\r``-rewritten line on stderr: percent, bytes, rate, ETA."""

    def __init__(self, label: str, total: int, out: IO[str] = sys.stderr) -> None:
        self.label, self.total, self.out = label, total, out
        self.start = time.monotonic()
        self.first: int | None = None

    def update(self, done: int) -> None:
        if self.first is None:
            self.first = done  # resumed bytes do not count towards the rate
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = (done - self.first) / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
        width = 24
        filled = int(width * pct / 100)
        bar = "#" * filled + "-" * (width - filled)
        self.out.write(
            f"\r{self.label} [{bar}] {pct:5.1f}% {_size(done)}/{_size(self.total)} "
            f"{_size(rate)}/s ETA {eta}  "
        )
        self.out.flush()

    def done(self) -> None:
        self.out.write("\n")
        self.out.flush()


class TusClient:
    def __init__(self, client: httpx.Client, key: str) -> None:
        self.client = client
        self.headers = {"Tus-Resumable": TUS_VERSION, "Authorization": f"Bearer {key}"}

    def _check(self, response: httpx.Response, *ok: int) -> httpx.Response:
        if response.status_code not in ok:
            try:
                reason = response.json().get("error", response.text)
            except ValueError:
                reason = response.text or response.reason_phrase
            raise UploadError(
                f"{response.request.method} {response.status_code}: {reason}",
                response.status_code,
            )
        return response

    def create(self, url: str, length: int, filename: str) -> str:
        headers = {
            **self.headers,
            "Upload-Length": str(length),
            "Upload-Metadata": encode_metadata({"filename": filename.encode()}),
        }
        response = self._check(self.client.post(url, headers=headers), 201)
        return str(response.url.join(response.headers["location"]))

    def offset(self, location: str) -> int | None:
        """The server's offset, or None when the upload is gone (start again)."""
        response = self.client.head(location, headers=self.headers)
        if response.status_code in (404, 410):
            return None
        self._check(response, 200)
        return int(response.headers["upload-offset"])

    def patch(self, location: str, offset: int, data: bytes) -> int:
        headers = {
            **self.headers,
            "Upload-Offset": str(offset),
            "Content-Type": OFFSET_CONTENT_TYPE,
        }
        response = self._check(self.client.patch(location, headers=headers, content=data), 204)
        return int(response.headers["upload-offset"])


def upload(
    options: AddOptions,
    client: httpx.Client,
    say: Callable[[str], None],
) -> str:
    """Upload (or resume) ``options.file``; returns the asset id."""
    file, origin = options.file, options.origin.rstrip("/")
    length = file.stat().st_size
    tus = TusClient(client, options.key)
    cache_key = _cache_key(file, origin)
    location = options.resume or _cache_load().get(cache_key)
    offset: int | None = None
    if location is not None:
        offset = tus.offset(location)
        if offset is None:
            say(f"previous upload {location} is gone; starting again")
        else:
            say(f"resuming {location} at {offset} of {length} bytes")
    if location is None or offset is None:
        location = tus.create(f"{origin}/api/vod", length, file.name)
        offset = 0
    _cache_store(cache_key, location)
    bar = ProgressBar("upload   ", length)
    bar.update(offset)
    failures = 0
    with file.open("rb") as f:
        while offset < length:
            f.seek(offset)
            data = f.read(options.chunk_size)
            try:
                offset = tus.patch(location, offset, data)
                failures = 0
            except (httpx.TransportError, UploadError) as exc:
                if isinstance(exc, UploadError) and not exc.retryable:
                    raise
                # Lost connection or a conflicting offset: ask where the server is and
                # go on from there, with a growing pause, a few times.
                failures += 1
                if failures > RETRIES:
                    raise UploadError(f"upload failed after {RETRIES} retries: {exc}") from exc
                time.sleep(min(0.25 * 2**failures, 8.0))
                try:
                    server = tus.offset(location)
                except httpx.TransportError:
                    continue
                if server is None:
                    raise UploadError("the upload disappeared from the origin") from exc
                offset = server
            bar.update(offset)
    bar.done()
    _cache_store(cache_key, None)
    return location.rstrip("/").rsplit("/", 2)[-2]


def follow(
    client: httpx.Client, origin: str, asset: str, poll_s: float, out: IO[str] = sys.stderr
) -> dict[str, Any]:
    """Poll ``GET /api/vod/ID`` with a progress bar until ready or failed."""
    while True:
        response = client.get(f"{origin.rstrip('/')}/api/vod/{asset}")
        if response.status_code != 200:
            raise UploadError(f"status {response.status_code}: {response.text[:200]}")
        job: dict[str, Any] = response.json()
        state = job["state"]
        pct = float(job.get("progress") or 0.0)
        filled = int(24 * pct / 100)
        out.write(
            f"\r{'transcode':<9} [{'#' * filled}{'-' * (24 - filled)}] {pct:5.1f}% {state}   "
        )
        out.flush()
        if state in ("ready", "failed"):
            out.write("\n")
            out.flush()
            if state == "failed":
                raise UploadError(f"transcode failed: {job.get('error')}")
            return job
        time.sleep(poll_s)


def add(options: AddOptions) -> int:
    def say(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0)) as client:
            asset = upload(options, client, say)
            if not options.wait:
                print(asset)
                return 0
            job = follow(client, options.origin, asset, options.poll_s)
    except (UploadError, httpx.HTTPError, OSError) as exc:
        sys.stderr.write(f"\nmeshcast: {exc}\n")
        return 1
    playback = job["playback"]
    print(asset)
    print(f"hls:    {playback['hls']}")
    print(f"dash:   {playback['dash']}")
    print(f"player: {playback['player']}")
    return 0
