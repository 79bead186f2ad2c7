"""VOD jobs persisted in SQLite (``DATA/vod/jobs.sqlite``), so uploads and transcodes
survive an origin restart.

State machine: ``uploading -> queued -> transcoding -> ready | failed``. A job that was
``transcoding`` when the origin stopped goes back to ``queued`` at start; the chunks it
finished are kept (table ``chunks``) and not transcoded again. A refused upload is
``failed`` (never resumed); a cancelled one (tus DELETE) is deleted, rows and files.
Statements are single-row and quick, so they run on the event loop under one lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

UPLOADING: Final = "uploading"
QUEUED: Final = "queued"
TRANSCODING: Final = "transcoding"
READY: Final = "ready"
FAILED: Final = "failed"
# A live stream being recorded into the asset (origin/recordings.py); ready when it ends.
RECORDING: Final = "recording"
STATES: Final = (UPLOADING, QUEUED, TRANSCODING, READY, FAILED, RECORDING)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    length INTEGER NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    duration REAL,
    renditions TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    crashes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""


@dataclass(slots=True)
class Job:
    id: str
    owner: str
    filename: str
    length: int
    state: str
    progress: float = 0.0
    error: str | None = None
    duration: float | None = None
    renditions: list[str] = field(default_factory=list)
    created: float = 0.0
    updated: float = 0.0
    crashes: int = 0  # worker processes that died while running it


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "crashes" not in columns:  # a database from before the column
            self._db.execute("ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: tuple[Any, ...]) -> Job:
        (id_, owner, filename, length, state, progress, error, duration, rends, created, upd,
         crashes) = row  # fmt: skip
        return Job(
            id_, owner, filename, length, state, progress, error, duration, json.loads(rends),
            created, upd, crashes,
        )  # fmt: skip

    def create(self, job_id: str, owner: str, filename: str, length: int) -> Job:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, owner, filename, length, state, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, owner, filename, length, UPLOADING, now, now),
            )
        return Job(job_id, owner, filename, length, UPLOADING, created=now, updated=now)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(row) if row else None

    def all(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created").fetchall()
        return [self._row(r) for r in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        if "renditions" in fields:
            fields["renditions"] = json.dumps(fields["renditions"])
        fields["updated"] = time.time()
        columns = ", ".join(f"{name} = ?" for name in fields)  # names are ours, not input
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {columns} WHERE id = ?",  # noqa: S608
                (*fields.values(), job_id),
            )

    def queued(self) -> list[Job]:
        """Jobs waiting for the transcoder, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY updated", (QUEUED,)
            ).fetchall()
        return [self._row(r) for r in rows]

    def usage(self, owner: str) -> tuple[int, int]:
        """(bytes of all the owner's uploads, number not yet ready or failed): quotas."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(length), 0), COALESCE(SUM(state IN (?, ?, ?)), 0) "
                "FROM jobs WHERE owner = ?",
                (UPLOADING, QUEUED, TRANSCODING, owner),
            ).fetchone()
        return int(row[0]), int(row[1])

    def requeue_interrupted(self) -> list[str]:
        """At start: jobs that were transcoding when the origin stopped run again."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state = ?", (TRANSCODING,))
            ids = [r[0] for r in rows.fetchall()]
            self._db.execute(
                "UPDATE jobs SET state = ?, updated = ? WHERE state = ?",
                (QUEUED, time.time(), TRANSCODING),
            )
        return ids

    def save_chunk(self, job_id: str, index: int, result: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO chunks (job_id, idx, result) VALUES (?, ?, ?)",
                (job_id, index, json.dumps(result)),
            )

    def chunks(self, job_id: str) -> dict[int, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, result FROM chunks WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {idx: json.loads(result) for idx, result in rows}

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM chunks WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
