"""One logging setup for every role: human-readable lines on stderr."""

from __future__ import annotations

import logging
import os
from typing import Literal

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("MESHCAST_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # uvicorn's per-request access lines drown the ingest logs; errors still show.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
