"""Edge access log in the trace format of DESIGN.md (CSV ``ts,client,path,bytes``), rotated
by size; it is the training and evaluation data of the cache policies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final, TextIO

from starlette.requests import Request

HEADER: Final = "ts,client,path,bytes"


class AccessLog:
    """Appends one line per response; ``access.csv`` rolls to ``access.csv.1`` … ``.N``."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024, backups: int = 5) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: TextIO = self._open()

    def _open(self) -> TextIO:
        f = self.path.open("a", encoding="utf-8")
        if f.tell() == 0:
            f.write(HEADER + "\n")  # every file, first or rotated, starts with the header
            f.flush()
        return f

    def write(self, request: Request, size: int) -> None:
        client = request.client.host if request.client else "-"
        # Paths are whitelisted (no commas, quotes or newlines): no CSV quoting needed.
        self._file.write(f"{time.time():.3f},{client},{request.url.path},{size}\n")
        self._file.flush()
        if self._file.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self._open()

    def close(self) -> None:
        self._file.close()
