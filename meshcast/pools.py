"""Process pools for CPU work the event loop must not do (VOD transcodes, recordings)."""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing

from meshcast.logs import ignore_terminal_signals, setup_logging


def _worker_init(log_level: int) -> None:
    # Ctrl-C goes to the parent, which shuts the pool down; workers must not die first.
    ignore_terminal_signals()
    setup_logging(logging.getLevelName(log_level))


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """``workers`` spawned processes (no state forked from the event loop's process) that
    log like their parent and leave terminal signals to it."""
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(logging.getLogger().level,),
    )
