"""VOD transcode wall time: our chunk-parallel transcode (process pool, one process per core)
vs one sequential ffmpeg CLI run producing the same ladder from the same file.

Run from the repository root: ``.venv/bin/python -m bench.vod [--seconds 30] [--size
1920x1080] [--runs 2]``. Rewrites the block between the VOD markers in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import shlex
import statistics
import tempfile
import time
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import av

from bench.ladder import FFMPEG, FPS, RESULTS, check_master, cli_command, machine, run_cli
from bench.ladder import make_source as make_ladder_source
from meshcast.config import TranscodeConfig, VodConfig
from meshcast.store import LocalStore
from transcoder import vod_transcode as vod

START, END = "<!-- vod:start -->", "<!-- vod:end -->"


def run_ours(src: Path, out: Path, workers: int, chunk_segments: int) -> float:
    """What the origin's job runner does for one upload (minus the poster/thumbnails,
    which the CLI side does not make), timed from probe to the last manifest."""
    config = TranscodeConfig(encoder="x264")
    segment_duration = Fraction(config.segment_duration)
    store, prefix = LocalStore(out), "vod/bench"
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pool.submit(int).result()  # the origin's pool is warm: do not time process start-up
        start = time.perf_counter()
        info = vod.probe(src)
        backend, rungs = vod.plan_rungs(info, config)
        chunks = vod.plan_chunks(info, segment_duration, chunk_segments)
        audio = pool.submit(
            vod.transcode_audio, vod.AudioJob(str(src), info, segment_duration, 128)
        )
        futures = [
            pool.submit(
                vod.transcode_chunk,
                vod.ChunkJob(str(src), info, chunk, rungs, backend, segment_duration),
            )
            for chunk in chunks
        ]
        parts = []
        for future in futures:
            result = future.result()
            for output in result.renditions:
                vod.write_output(store, prefix, output)
            parts.append({"renditions": [vod.rendition_json(o) for o in result.renditions]})
        audio_out = audio.result()
        assert audio_out is not None
        vod.write_output(store, prefix, audio_out)
        vod.write_manifests(
            store, prefix, info, parts, vod.rendition_json(audio_out), segment_duration
        )
        wall = time.perf_counter() - start
    check_master(out / prefix / "master.m3u8", list(rungs))
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-segments", type=int, default=VodConfig().chunk_segments)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    host = machine()
    walls: dict[str, list[float]] = {"ours (chunk-parallel)": [], "ffmpeg CLI (sequential)": []}
    with tempfile.TemporaryDirectory(prefix="meshcast-bench-vod-") as tmp:
        src = Path(tmp) / "source.mp4"
        make_ladder_source(src, args.seconds, args.size)
        info = vod.probe(src)
        _, rungs = vod.plan_rungs(info, TranscodeConfig(encoder="x264"))
        for i in range(args.runs):
            ours = run_ours(src, Path(tmp) / f"ours{i}", args.workers, args.chunk_segments)
            walls["ours (chunk-parallel)"].append(ours)
            cli, _ = run_cli(src, Path(tmp) / f"cli{i}", list(rungs))
            walls["ffmpeg CLI (sequential)"].append(cli)
            print(f"run {i + 1}: ours {ours:.2f}s, CLI {cli:.2f}s (wall)", flush=True)
        command = shlex.join(cli_command(Path("source.mp4"), Path("out"), list(rungs))[1:])
    rows = ["| side | runs (wall s) | best | mean | x realtime (mean) |", "|---|---|---|---|---|"]
    for side, values in walls.items():
        mean = statistics.mean(values)
        listed = ", ".join(f"{v:.2f}" for v in values)
        rows.append(
            f"| {side} | {listed} | {min(values):.2f} | {mean:.2f} | {args.seconds / mean:.2f}x |"
        )
    ours_mean = statistics.mean(walls["ours (chunk-parallel)"])
    cli_mean = statistics.mean(walls["ffmpeg CLI (sequential)"])
    rows.append(f"| **CLI wall / ours wall (mean)** | | | **{cli_mean / ours_mean:.2f}** | |")
    ladder = ", ".join(f"{r.name} {r.width}x{r.height} {r.video_kbps}k" for r in rungs)
    block = "\n".join([
        START,
        f"- date: `{datetime.now(UTC):%a %b %d %H:%M:%S UTC %Y}`",
        f"- machine: {host}; libav via PyAV {av.__version__}, CLI {FFMPEG}",
        f"- source: {args.seconds} s testsrc2 {args.size}@{FPS} + sine, H.264 + AAC MP4",
        f"- rungs: {ladder}; ours: {args.workers} worker processes, "
        f"{args.chunk_segments} segments per chunk; {args.runs} runs per side",
        "", *rows, "",
        f"ffmpeg CLI side: `ffmpeg {command}`",
        END,
    ])  # fmt: skip
    print(block)
    if not args.no_write:
        text = RESULTS.read_text()
        if START not in text:
            text += f"\n{START}\n{END}\n"
        head, rest = text.split(START, 1)
        RESULTS.write_text(head + block + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
