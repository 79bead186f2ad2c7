"""Segment store: where transcoders write and origins read CMAF files and manifests.

Local disk now (an S3-compatible backend comes with the storage issue). Writes are atomic
(temp file + rename), so a reader never sees half a segment or half a playlist.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol


class SegmentStore(Protocol):
    def put(self, key: str, data: bytes | str) -> None: ...

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
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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
