"""Edge access log in the trace format of DESIGN.md (CSV ``ts,client,path,bytes``), rotated
by size; it is the training and evaluation data of the cache policies."""

from __future__ import annotations

import logging
import logging.handlers
import time
from pathlib import Path
from typing import Final

from starlette.requests import Request

HEADER: Final = "ts,client,path,bytes"


class _CsvRotatingHandler(logging.handlers.RotatingFileHandler):
    """Every file, the first and each rotated one, starts with the CSV header."""

    def _open(self):  # type: ignore[no-untyped-def]
        stream = super()._open()
        if stream.tell() == 0:
            stream.write(HEADER + "\n")
        return stream


class AccessLog:
    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024, backups: int = 5) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = _CsvRotatingHandler(path, maxBytes=max_bytes, backupCount=backups)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.getLogger(f"meshcast.access.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)

    def write(self, request: Request, size: int) -> None:
        client = request.client.host if request.client else "-"
        # Paths are whitelisted (no commas or quotes), so no CSV quoting is needed.
        self._logger.info("%.3f,%s,%s,%d", time.time(), client, request.url.path, size)

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
