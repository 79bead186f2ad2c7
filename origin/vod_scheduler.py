"""Which VOD task runs next on the worker pool (pure bookkeeping, no I/O).

Fairness, in this order:
- owners take turns: the next free slot goes to the owner with the fewest tasks running
  (ties: the one served longest ago, then the one waiting longest), so one creator's
  many uploads do not starve another's;
- within an owner, the job with the fewest tasks running (ties: the oldest);
- a job holds at most ``workers - 1`` slots while another job has work waiting, so a
  large job never keeps the whole pool: a small job starts as soon as one task of the
  large one ends (tasks are bounded: a chunk is ``chunk_segments`` segments of video
  within the probe limits). A job alone may use every slot.

Running tasks are counted per job until they end, even for a job that was removed
(cancelled or failed): its processes are still busy, the pool is not freer for it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Task:
    job: str
    part: int  # a chunk index, or one of the job's special parts (origin/vod_service.py)
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass
class _Job:
    owner: str
    order: int
    pending: deque[Task] = field(default_factory=deque)


class FairQueue:
    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._jobs: dict[str, _Job] = {}
        self._running: dict[str, int] = {}  # job -> tasks running (removed jobs too)
        self._owner_of: dict[str, str] = {}
        self._served: dict[str, int] = {}  # owner -> when it last got a slot
        self._clock = itertools.count()

    # ---- jobs and tasks -------------------------------------------------------------

    def add_job(self, job: str, owner: str) -> None:
        if job not in self._jobs:
            self._jobs[job] = _Job(owner, next(self._clock))
            self._owner_of[job] = owner

    def push(self, task: Task) -> None:
        """Queue a task of a known job (a job removed meanwhile gets nothing queued)."""
        entry = self._jobs.get(task.job)
        if entry is not None:
            entry.pending.append(task)

    def remove_job(self, job: str) -> list[Task]:
        """Forget a job (cancelled, failed, requeued); its pending tasks are returned."""
        removed = self._jobs.pop(job, None)
        return list(removed.pending) if removed else []

    def has_job(self, job: str) -> bool:
        return job in self._jobs

    def running(self, job: str) -> int:
        return self._running.get(job, 0)

    def pending(self, job: str) -> int:
        entry = self._jobs.get(job)
        return len(entry.pending) if entry else 0

    @property
    def busy(self) -> int:
        return sum(self._running.values())

    # ---- scheduling -----------------------------------------------------------------

    def next(self) -> Task | None:
        """The next task to start, now counted as running; None when the pool is full or
        nothing may run."""
        if self.busy >= self.workers:
            return None
        waiting = [j for j, entry in self._jobs.items() if entry.pending]
        eligible = []
        for job in waiting:
            cap = self.workers - 1 if len(waiting) > 1 else self.workers
            if self.running(job) < max(1, cap):
                eligible.append(job)
        if not eligible:
            return None

        def owner_running(owner: str) -> int:
            return sum(n for j, n in self._running.items() if self._owner_of.get(j) == owner)

        def oldest(owner: str) -> int:
            return min(self._jobs[j].order for j in eligible if self._jobs[j].owner == owner)

        owner = min(
            {self._jobs[j].owner for j in eligible},
            key=lambda o: (owner_running(o), self._served.get(o, -1), oldest(o)),
        )
        job = min(
            (j for j in eligible if self._jobs[j].owner == owner),
            key=lambda j: (self.running(j), self._jobs[j].order),
        )
        self._served[owner] = next(self._clock)
        self._running[job] = self.running(job) + 1
        return self._jobs[job].pending.popleft()

    def finished(self, job: str) -> None:
        """One of ``job``'s tasks ended (done, failed or cancelled)."""
        left = self.running(job) - 1
        if left > 0:
            self._running[job] = left
        else:
            self._running.pop(job, None)
            if job not in self._jobs:
                self._owner_of.pop(job, None)
