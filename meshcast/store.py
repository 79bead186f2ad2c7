"""Segment store: where transcoders (live and VOD) write and origins read CMAF files,
manifests and VOD images. The one storage interface: nothing else touches media files.

Local disk (``LocalStore``, writes atomic: temp file + rename, so a reader never sees half a
segment or half a playlist) or any S3-compatible service (``open_store``, meshcast/s3store.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from meshcast.files import atomic_write


class SegmentStore(Protocol):
    def put(self, key: str, data: bytes | str) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def clear(self, prefix: str) -> None: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"store key {key!r} escapes the store root")
        return path

    def put(self, key: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        atomic_write(self.path(key), data)

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def clear(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)


def open_store(spec: str, root: Path) -> SegmentStore:
    """The store a ``--store`` value names: empty → local disk under ``root``;
    ``s3://BUCKET[/PREFIX]?endpoint=URL`` → any S3-compatible service (meshcast/s3store.py)."""
    if not spec:
        return LocalStore(root)
    from meshcast.s3store import S3Location, S3Store

    return S3Store(S3Location.parse(spec))
