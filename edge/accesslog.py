"""Edge access log in the trace format of DESIGN.md (CSV ``ts,client,path,bytes``), rotated
by size; it is the training and evaluation data of the cache policies."""

from __future__ import annotations

import asyncio
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
        self._flush_pending = False

    def _open(self) -> TextIO:
        f = self.path.open("a", encoding="utf-8")
        if f.tell() == 0:
            f.write(HEADER + "\n")  # every file, first or rotated, starts with the header
            f.flush()
        self._written = f.tell()
        return f

    def write(self, client: str, path: str, size: int) -> None:
        # Paths are whitelisted (no commas, quotes or newlines): no CSV quoting needed.
        line = f"{time.time():.3f},{client},{path},{size}\n"
        self._file.write(line)
        self._written += len(line)  # ASCII: characters are bytes; tell() costs a syscall
        if self._written >= self.max_bytes:
            self._rotate()
        # One flush per second at most, not one syscall per request.
        if not self._flush_pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._file.flush()
                return
            self._flush_pending = True
            loop.call_later(1.0, self._flush)

    def write_request(self, request: Request, size: int) -> None:
        self.write(request.client.host if request.client else "-", request.url.path, size)

    def _flush(self) -> None:
        self._flush_pending = False
        if not self._file.closed:
            self._file.flush()

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
