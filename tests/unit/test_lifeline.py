"""Worker processes end with their parent and on SIGTERM (issue 20, attack 8)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import os, sys, time
from meshcast.lifeline import worker_pool
if __name__ == "__main__":
    pool = worker_pool(1)
    print(pool.submit(os.getpid).result(), flush=True)
    time.sleep(120)
"""

GRACEFUL = """
import multiprocessing, os, sys, time
from meshcast.lifeline import worker_start

def work(parent, marker):
    worker_start(parent, graceful=True)
    try:
        open(marker + ".ready", "w").close()
        time.sleep(120)
    finally:
        open(marker, "w").write("finally ran")

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=work, args=(os.getpid(), sys.argv[1]))
    p.start()
    print(p.pid, flush=True)
    p.join()
    print(p.exitcode, flush=True)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (its reaper may be slow)


def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def run(tmp_path: Path, code: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / f"script{len(list(tmp_path.iterdir()))}.py"
    script.write_text(code)  # a file, not -c: spawn re-imports the target from __main__
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env=env
    )


def ready(marker: Path) -> None:
    deadline = time.monotonic() + 30
    while not Path(f"{marker}.ready").exists():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.05)


def first_line(parent: subprocess.Popen[str]) -> int:
    assert parent.stdout is not None
    return int(parent.stdout.readline())


def test_pool_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    with run(tmp_path, PARENT) as parent:
        worker = first_line(parent)
        assert alive(worker)
        parent.kill()  # kill -9: no cleanup code runs in the parent
    assert wait_gone(worker, 15), f"worker {worker} outlived its parent"


def test_pool_workers_honour_sigterm(tmp_path: Path) -> None:
    with run(tmp_path, PARENT) as parent:
        worker = first_line(parent)
        os.kill(worker, signal.SIGTERM)
        try:
            assert wait_gone(worker, 10), "the pool worker ignored SIGTERM"
        finally:
            parent.kill()


def test_graceful_worker_runs_its_finally_on_sigterm_and_parent_death(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with run(tmp_path, GRACEFUL, str(marker)) as parent:
        worker = first_line(parent)
        ready(marker)
        os.kill(worker, signal.SIGTERM)
        assert first_line(parent) == 128 + signal.SIGTERM
    assert marker.read_text() == "finally ran"
    # And when the parent is killed instead: the worker ends through the same path.
    marker.unlink()
    Path(f"{marker}.ready").unlink()
    with run(tmp_path, GRACEFUL, str(marker)) as parent:
        worker = first_line(parent)
        ready(marker)
        parent.kill()
    assert wait_gone(worker, 15)
    assert marker.read_text() == "finally ran"
