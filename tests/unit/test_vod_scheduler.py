"""The VOD fair queue (origin/vod_scheduler.py): owners take turns, no job keeps the whole
pool while another waits, a small job is not stuck behind a large one."""

from __future__ import annotations

from origin.vod_scheduler import FairQueue, Task


def tasks(job: str, n: int) -> list[Task]:
    return [Task(job, i, print, ()) for i in range(n)]


def fill(q: FairQueue, job: str, owner: str, n: int) -> None:
    q.add_job(job, owner)
    for t in tasks(job, n):
        q.push(t)


def started(q: FairQueue) -> list[str]:
    out = []
    while (task := q.next()) is not None:
        out.append(task.job)
    return out


def test_a_job_alone_uses_every_worker() -> None:
    q = FairQueue(4)
    fill(q, "big", "alice", 100)
    assert started(q) == ["big"] * 4


def test_a_large_job_never_keeps_the_pool_from_a_waiting_one() -> None:
    q = FairQueue(4)
    fill(q, "big", "alice", 100)
    assert started(q) == ["big"] * 4
    fill(q, "small", "bob", 2)
    q.finished("big")  # the first chunk of the large job ends
    assert started(q) == ["small"]
    q.finished("big")
    # The large job is at its cap (workers - 1) while the small one still waits.
    assert started(q) == ["small"]
    q.finished("small")
    q.finished("small")
    assert started(q) == ["big", "big"]  # alone again: it may use everything


def test_owners_take_turns_whatever_their_backlog() -> None:
    q = FairQueue(2)
    for i in range(5):
        fill(q, f"a{i}", "alice", 3)
    fill(q, "b0", "bob", 3)
    first = started(q)
    assert sorted(first) == ["a0", "b0"]
    order = []
    for _ in range(6):
        job = first.pop(0)
        q.finished(job)
        (nxt,) = started(q)
        first.append(nxt)
        order.append(nxt[0])
    # Bob (one job) gets every other slot, not one in six.
    assert order.count("b") >= 2 and order.count("a") >= 2


def test_single_worker_round_robins_jobs() -> None:
    q = FairQueue(1)
    fill(q, "x", "alice", 3)
    fill(q, "y", "bob", 3)
    seen = []
    for _ in range(6):
        (job,) = started(q)
        seen.append(job)
        q.finished(job)
    assert seen == ["x", "y", "x", "y", "x", "y"]


def test_removed_jobs_keep_their_slots_until_their_tasks_end() -> None:
    q = FairQueue(2)
    fill(q, "gone", "alice", 5)
    assert started(q) == ["gone", "gone"]
    assert len(q.remove_job("gone")) == 3
    fill(q, "next", "bob", 2)
    assert started(q) == []  # the cancelled job's processes are still busy
    q.finished("gone")
    assert started(q) == ["next"]
    q.push(Task("gone", 9, print, ()))  # a late task of a removed job is dropped
    q.finished("gone")
    assert started(q) == ["next"]
