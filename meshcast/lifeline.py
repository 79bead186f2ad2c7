"""Worker processes end with their parent, and on SIGTERM.

Every worker process we start (VOD transcode pool, live transcoder workers, edge plugin
inference pools, the ML trainer, the demo source) calls ``worker_start`` first thing:

- SIGINT is ignored: Ctrl-C reaches the whole process group, and shutdown is the parent's
  job (it ends streams so live workers write their ENDLIST, then joins them).
- SIGTERM ends the worker: at once for pool workers (their unfinished work is redone),
  as ``SystemExit(143)`` in the main thread for live transcoders (``finally`` blocks
  close the playlists first).
- The parent's death ends the worker: a thread waits on a pidfd of the parent (Linux
  5.3+; a poll of ``getppid()`` elsewhere) and sends the worker SIGTERM, then kills it
  if it has not exited within ``grace`` seconds. ``PR_SET_PDEATHSIG`` is not used: it
  fires when the *thread* that forked the child exits, and executors start workers from
  whatever thread submits the first job (a short-lived ``asyncio.to_thread`` worker would
  take its pool down with it).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGTERM_EXIT = 128 + signal.SIGTERM


def _exit_gracefully(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(SIGTERM_EXIT)


def worker_start(parent_pid: int, graceful: bool = False, grace: float = 10.0) -> None:
    """Set up signals and the parent watch in a freshly started worker process.
    ``parent_pid``: ``os.getpid()`` of the parent, passed in by it (a worker cannot tell
    its original parent from a reaper once the parent is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_gracefully if graceful else signal.SIG_DFL)
    threading.Thread(
        target=_watch_parent, args=(parent_pid, grace), name="parent-watch", daemon=True
    ).start()


def _watch_parent(parent_pid: int, grace: float) -> None:
    _wait_for_exit(parent_pid)
    log.warning("worker %d: parent %d is gone; exiting", os.getpid(), parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os._exit(SIGTERM_EXIT)  # the SIGTERM handler did not get to run (stuck in C code)


def _wait_for_exit(pid: int) -> None:
    if os.getppid() != pid:
        return  # already re-parented: the parent died before we got here
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        while os.getppid() == pid:
            time.sleep(0.5)
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
    finally:
        os.close(fd)


def _pool_worker(
    parent_pid: int, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
) -> None:
    worker_start(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def worker_pool(
    max_workers: int,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> ProcessPoolExecutor:
    """A spawn-context process pool whose workers end with this process and on SIGTERM
    (``initializer(*initargs)`` runs after that set-up in each worker)."""
    return ProcessPoolExecutor(
        max_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_pool_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool now, its running work included (``shutdown`` waits for running tasks,
    and a task stuck on a hostile input may never end)."""
    processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
