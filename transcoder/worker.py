"""Per-stream transcoder worker process, and the ingest-side sink that feeds it.

Ingest (event loop) -> bounded multiprocessing queue -> worker process (decode, scale,
encode, package). The queue is bounded: when a worker falls behind, video is dropped up to
the next keyframe (a decodable point) instead of growing memory or blocking ingest.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshcast.config import TranscodeConfig
from meshcast.ingest import (
    AudioConfig,
    IngestItem,
    KeyframeGate,
    MediaPacket,
    VideoConfig,
    deliver,
)
from meshcast.lifeline import worker_start
from meshcast.logs import setup_logging
from meshcast.store import open_store
from transcoder.recording import RecordingTarget

log = logging.getLogger(__name__)

Item = IngestItem | None  # None: end of stream
# Worker exit status when the publisher's media cannot be followed (MediaChangeRefused: e.g.
# codec parameters changed under the source rung); the stream ends with this reason.
EXIT_MEDIA_REFUSED = 3
_EXIT_REASONS = {
    EXIT_MEDIA_REFUSED: "the publisher's media changed in a way this stream cannot follow "
    "(the origin log says what); republish"
}


def worker_main(
    name: str,
    data_dir: Path,
    config: TranscodeConfig,
    inbox: Any,
    log_level: int,
    parent: int,
    *,
    recording: RecordingTarget | None = None,
) -> None:
    # SIGTERM (or the origin's death) ends the stream cleanly: SystemExit runs the finally.
    worker_start(parent, graceful=True)
    setup_logging(logging.getLevelName(log_level))
    from transcoder.pipeline import LadderPipeline, MediaChangeRefused

    store = open_store(config.segment_store, data_dir)
    store.clear(f"live/{name}")  # a new publication starts a new timeline
    pipeline = LadderPipeline(name, store, config, recording=recording)
    refused = False
    try:
        while True:
            item = inbox.get()
            if item is None:
                break
            deliver(pipeline, item)
    except KeyboardInterrupt:
        pass
    except MediaChangeRefused as exc:
        log.error("stream %s: %s", name, exc)
        refused = True
    finally:
        # Also on errors: playlists get their ENDLIST so players stop cleanly.
        try:
            pipeline.on_end()
        except Exception:
            log.exception("stream %s: could not finalize playlists", name)
    if refused:
        sys.exit(EXIT_MEDIA_REFUSED)


class WorkerSink:
    """PacketSink for one live stream: forwards to its worker process."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        config: TranscodeConfig,
        on_failure: Callable[[str], None],
        *,
        recording: RecordingTarget | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self._inbox: Any = ctx.Queue(config.queue_packets)
        self._process = ctx.Process(
            target=worker_main,
            args=(name, data_dir, config, self._inbox, logging.getLogger().level, os.getpid()),
            kwargs={"recording": recording},
            name=f"meshcast-transcode-{name}",
            daemon=True,
        )
        self._on_failure = on_failure
        self._ending = False
        self._failed = False
        self._gate = KeyframeGate()
        self._process.start()
        self._watcher = threading.Thread(target=self._watch, name=f"watch-{name}", daemon=True)
        self._watcher.start()
        log.info("stream %s: transcoder worker pid %s", name, self._process.pid)

    def _watch(self) -> None:
        self._process.join()
        code = self._process.exitcode
        if code != 0 and not self._failed:
            self._failed = True
            log.error("stream %s: transcoder worker exited with code %s", self.name, code)
            self._on_failure(_EXIT_REASONS.get(code or 0, f"transcoder failed (exit code {code})"))

    def _put(self, item: Item) -> bool:
        if self._failed or self._ending:
            return False
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            return False
        return True

    def on_video_config(self, config: VideoConfig) -> None:
        self._put(config)

    def on_audio_config(self, config: AudioConfig) -> None:
        self._put(config)

    def on_packet(self, packet: MediaPacket) -> None:
        if not self._gate.admit(packet):
            return
        if not self._put(packet) and self._gate.lost(packet) and not self._failed:
            log.warning(
                "stream %s: transcoder behind (queue full); dropping video to the next keyframe",
                self.name,
            )

    @property
    def dropped(self) -> int:
        return self._gate.dropped

    def on_end(self) -> None:
        if self._ending or self._failed:
            return
        self._ending = True
        # put() may wait for queue space; the worker is draining, so this is brief.
        threading.Thread(target=self._finish, name=f"end-{self.name}", daemon=True).start()

    def _finish(self) -> None:
        try:
            self._inbox.put(None, timeout=30)
        except queue.Full:
            log.error("stream %s: worker did not drain; terminating it", self.name)
            self._process.terminate()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._watcher.is_alive()  # see join(): never poll the process from here

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker process exited (True), at most ``timeout`` seconds."""
        self._watcher.join(timeout)
        return not self._watcher.is_alive()

    def join(self, timeout: float) -> None:
        # Only the watcher thread reaps the process: two threads in Process.join() race on
        # waitpid and the loser reads exit code None (a false "worker failed").
        self._watcher.join(timeout)
        if self._watcher.is_alive():
            log.warning("stream %s: worker still running after %.0f s; killing", self.name, timeout)
            self._process.kill()
            self._watcher.join(2)
