"""Ladder throughput: our LadderPipeline (PyAV, libx264) vs the ffmpeg CLI doing the same job.

Same source, same rungs, same x264 settings; each side runs ``--runs`` times, alternating.
Run from the repository root: ``.venv/bin/python -m bench.ladder [--seconds N] [--size WxH]``.
The measured block of bench/RESULTS.md (between the markers) is rewritten on every run.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import av

from meshcast import codecs
from meshcast.config import TranscodeConfig
from meshcast.ingest import MediaKind, MediaPacket
from meshcast.store import LocalStore
from transcoder.encoders import Backend, _options
from transcoder.ladder import Rung, RungSpec, plan_ladder
from transcoder.pipeline import LadderPipeline

FFMPEG = "/usr/bin/ffmpeg"
FPS = 30
SEGMENT = 2
RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- results:start -->", "<!-- results:end -->"


def make_source(path: Path, seconds: int, size: str) -> None:
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(2 * FPS),
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-b:a", "128k", str(path)],
        check=True,
    )  # fmt: skip


def check_master(master: Path, rungs: list[Rung]) -> None:
    """The run counts only if it produced a multivariant playlist with every rung."""
    if not master.is_file():
        raise SystemExit(f"broken run: {master} missing")
    found = sorted(re.findall(r"RESOLUTION=(\d+x\d+)", master.read_text()))
    want = sorted(f"{r.width}x{r.height}" for r in rungs)
    if found != want:
        raise SystemExit(f"broken run: {master} has variants {found}, expected {want}")
    for uri in re.findall(r"^([^#\s].*\.m3u8)$", master.read_text(), re.MULTILINE):
        text = (master.parent / uri).read_text()
        if "#EXT-X-ENDLIST" not in text or ".m4s" not in text:
            raise SystemExit(f"broken run: {uri} is not a finished fMP4 playlist")


Run = tuple[float, float]  # (wall seconds, CPU seconds of every thread)


def run_ours(src: Path, out: Path, rungs: list[Rung], frames: int) -> Run:
    pipeline = LadderPipeline("bench", LocalStore(out), TranscodeConfig(encoder="x264"))
    with av.open(str(src)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        avcc, asc = video.codec_context.extradata or b"", audio.codec_context.extradata or b""
        start, cpu = time.perf_counter(), time.process_time()
        pipeline.on_video_config(codecs.h264_video_config(avcc))
        pipeline.on_audio_config(codecs.aac_audio_config(asc))
        for pkt in container.demux(video, audio):
            if pkt.size == 0 or pkt.dts is None or pkt.pts is None:
                continue  # demuxer flush packets
            if pkt.stream.type == "video":
                kind, dts, key = MediaKind.VIDEO, pkt.dts, pkt.is_keyframe
            else:
                kind, dts, key = MediaKind.AUDIO, pkt.pts, True
            pipeline.on_packet(MediaPacket(kind, bytes(pkt), dts, pkt.pts, key, pkt.time_base))
        pipeline.on_end()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if pipeline.frames_in != frames or pipeline.frames_dropped:
        raise SystemExit(f"broken run: {pipeline.frames_in} frames in, expected {frames}")
    check_master(out / "live" / "bench" / "master.m3u8", rungs)
    return wall, cpu


def cli_command(src: Path, out: Path, rungs: list[Rung]) -> list[str]:
    n = len(rungs)
    split = f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n))
    scales = [f"[s{i}]scale={r.width}:{r.height}[v{i}]" for i, r in enumerate(rungs)]
    cmd = [FFMPEG, *shlex.split("-hide_banner -loglevel error -y -i"), str(src)]
    cmd += ["-filter_complex", ";".join([split, *scales])]
    for i in range(n):
        cmd += ["-map", f"[v{i}]"]
    cmd += shlex.split("-map 0:a -c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p")
    cmd += ["-force_key_frames", f"expr:gte(t,n_forced*{SEGMENT})"]
    for i, rung in enumerate(rungs):
        # Our x264-params, but with a regular GOP instead of "only where forced".
        x264 = _options(Backend.X264, rung)["x264-params"]
        params = dict(p.split("=", 1) for p in x264.split(":"))
        params["keyint"] = str(SEGMENT * FPS)
        cmd += [f"-b:v:{i}", f"{rung.video_kbps}k"]
        cmd += [f"-x264-params:v:{i}", ":".join(f"{k}={v}" for k, v in params.items())]
    variants = [f"v:{i},agroup:aud,name:{r.name}" for i, r in enumerate(rungs)]
    cmd += shlex.split("-c:a copy -f hls -hls_segment_type fmp4 -hls_list_size 0")
    cmd += ["-hls_time", str(SEGMENT), "-hls_playlist_type", "vod"]
    cmd += ["-master_pl_name", "master.m3u8"]
    cmd += ["-var_stream_map", " ".join([*variants, "a:0,agroup:aud,name:audio"])]
    cmd += ["-hls_segment_filename", str(out / "%v" / "%d.m4s"), str(out / "%v" / "index.m3u8")]
    return cmd


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(src: Path, out: Path, rungs: list[Rung]) -> Run:
    cmd = cli_command(src, out, rungs)
    start, cpu = time.perf_counter(), child_cpu()
    subprocess.run(cmd, check=True)
    wall, cpu = time.perf_counter() - start, child_cpu() - cpu
    check_master(out / "master.m3u8", rungs)
    return wall, cpu


def cpu_stat() -> tuple[float, float]:
    """Machine-wide (busy, stolen by the hypervisor) CPU seconds, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return sum(fields[i] for i in (0, 1, 2, 5, 6)) / hz, fields[7] / hz


def machine() -> str:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    load = os.getloadavg()[0]
    return f"{os.cpu_count()} CPUs, {int(mem) / 2**20:.1f} GiB RAM, 1-min load {load:.2f} at start"


def table(results: dict[str, list[Run]], seconds: int) -> str:
    rows = ["| side | runs (wall s) | best wall s | mean wall s | best x-RT | mean x-RT "
            "| mean CPU s | cores busy |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    xrt: dict[str, tuple[float, float]] = {}
    for side, runs in results.items():
        walls = [w for w, _ in runs]
        best, mean, cpu = min(walls), statistics.mean(walls), statistics.mean(c for _, c in runs)
        xrt[side] = (seconds / best, seconds / mean)
        listed = ", ".join(f"{x:.2f}" for x in walls)
        rows.append(f"| {side} | {listed} | {best:.2f} | {mean:.2f} | {xrt[side][0]:.2f}x "
                    f"| {xrt[side][1]:.2f}x | {cpu:.2f} | {cpu / mean:.2f} |")  # fmt: skip
    (ob, om), (cb, cm) = xrt["ours"], xrt["ffmpeg CLI"]
    rows.append(f"| **ours / CLI x-RT** | | | | **{ob / cb:.2f}** | **{om / cm:.2f}** | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    ladder = [RungSpec(h, kbps) for h, kbps in TranscodeConfig().ladder]
    rungs = plan_ladder(width, height, ladder)
    results: dict[str, list[Run]] = {"ours": [], "ffmpeg CLI": []}
    noise: dict[str, list[str]] = {"ours": [], "ffmpeg CLI": []}  # steal / other CPU s
    host = machine()  # before we load the machine ourselves
    with tempfile.TemporaryDirectory(prefix="meshcast-bench-") as tmp:
        src = Path(tmp) / "source.mp4"
        make_source(src, args.seconds, args.size)
        for i in range(args.runs):
            for side in results:
                busy, steal = cpu_stat()
                if side == "ours":
                    run = run_ours(src, Path(tmp) / f"ours{i}", rungs, args.seconds * FPS)
                else:
                    run = run_cli(src, Path(tmp) / f"cli{i}", rungs)
                results[side].append(run)
                busy_after, steal_after = cpu_stat()
                other = max(0.0, busy_after - busy - run[1])
                noise[side].append(f"{steal_after - steal:.1f}/{other:.1f}")
            ours, cli = results["ours"][-1], results["ffmpeg CLI"][-1]
            print(f"run {i + 1}: ours {ours[0]:.2f}s, CLI {cli[0]:.2f}s (wall)", flush=True)
        command = shlex.join(cli_command(Path("source.mp4"), Path("out"), rungs)[1:])
    ladder_text = ", ".join(f"{r.name} {r.width}x{r.height} {r.video_kbps}k" for r in rungs)
    block = "\n".join([
        START,
        f"- date: `{datetime.now(UTC):%a %b %d %H:%M:%S UTC %Y}`",
        f"- machine: {host}; libav via PyAV {av.__version__}, CLI {FFMPEG}",
        f"- source: {args.seconds} s testsrc2 {args.size}@{FPS} + sine, H.264 + AAC MP4",
        f"- rungs: {ladder_text}; {args.runs} runs per side, alternating",
        "", table(results, args.seconds), "",
        "CPU s stolen by the hypervisor / used by anything else during each run: "
        + "; ".join(f"{k} " + ", ".join(v) for k, v in noise.items()),
        "",
        f"ffmpeg CLI side: `ffmpeg {command}`",
        END,
    ])  # fmt: skip
    print(block)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else f"# Ladder benchmark\n\n{START}\n{END}\n"
        head, rest = old.split(START, 1)
        RESULTS.write_text(head + block + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
