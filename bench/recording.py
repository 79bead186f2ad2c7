"""Recording costs no re-encode: CPU of a recorded and an unrecorded live stream,
published at the same time to one origin, each transcoded by its own worker process.

Both streams are the same ffmpeg CLI publish (testsrc2 + sine over RTMP); one stream key
records (the default), the other was created with ``--no-record``. The CPU time
(user + system, /proc/PID/stat) of each stream's transcoder worker is sampled until it
exits. Rounds alternate which key publishes first. Also measured: how long the recording
takes to become a VOD asset after the stream ends (manifests, then poster/thumbnails),
and whether the asset's segments are the live segments themselves (same inode: no copy,
no re-encode).

Run from the repository root: ``.venv/bin/python -m bench.recording [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.results import write_block
from meshcast.config import OriginConfig, TranscodeConfig
from origin.service import OriginService

FFMPEG = "/usr/bin/ffmpeg"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def publish(url: str, seconds: int, size: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        FFMPEG, "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
        "-g", "60", "-c:a", "aac", "-b:a", "128k", "-f", "flv", url,
    )  # fmt: skip
    if await proc.wait() != 0:
        raise SystemExit("broken run: the ffmpeg publish failed")


async def one_round(seconds: int, size: str, recorded_first: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-rec-") as tmp:
        data = Path(tmp)
        origin = OriginService(
            OriginConfig(
                data_dir=data,
                http_port=0,
                rtmp_port=0,
                transcode=TranscodeConfig(ladder=((480, 1400), (360, 800)), encoder="x264"),
            )
        )
        await origin.start()
        try:
            keys = {
                "rec": origin.keys.create("rec", owner="bench"),
                "plain": origin.keys.create("plain", owner="bench", record=False),
            }
            order = ["rec", "plain"] if recorded_first else ["plain", "rec"]
            rtmp = f"rtmp://127.0.0.1:{origin.rtmp.port}/live"
            pushes = []
            for name in order:
                pushes.append(asyncio.create_task(publish(f"{rtmp}/{keys[name]}", seconds, size)))
                await asyncio.sleep(0.2)
            pids: dict[str, int] = {}
            cpu: dict[str, float] = {}
            while not all(p.done() for p in pushes) or any(
                cpu_seconds(pid) is not None for pid in pids.values()
            ):
                for sink in origin._workers:
                    if sink.name not in pids and sink.pid is not None:
                        pids[sink.name] = sink.pid
                for name, pid in pids.items():
                    sample = cpu_seconds(pid)
                    if sample is not None:
                        cpu[name] = sample
                await asyncio.sleep(0.25)
            for push in pushes:
                push.result()
            ended = time.monotonic()
            async with httpx.AsyncClient(base_url=origin.url) as api:
                while True:
                    rec = (await api.get("/api/streams/rec")).json().get("recording") or {}
                    if rec.get("state") == "ready":
                        break
                    if time.monotonic() - ended > 120:
                        raise SystemExit(f"broken run: recording not ready: {rec}")
                    await asyncio.sleep(0.1)
                ready = time.monotonic() - ended
                asset = rec["asset"]
                info = (await api.get(f"/api/vod/{asset}")).json()
                while (await api.get(f"/vod/{asset}/poster.jpg")).status_code != 200:
                    if time.monotonic() - ended > 300:
                        raise SystemExit("broken run: no poster")
                    await asyncio.sleep(0.2)
                images = time.monotonic() - ended
                plain = (await api.get("/api/streams/plain")).json()
            if plain.get("recording") is not None:
                raise SystemExit("broken run: the --no-record stream was recorded")
            if abs(info["duration"] - seconds) > 2.5:
                raise SystemExit(f"broken run: recorded {info['duration']} s of {seconds} s")
            shared = total = 0
            for segment in (data / "vod" / asset).glob("*/*.m4s"):
                live = data / "live" / "rec" / segment.parent.name / segment.name
                total += 1
                shared += live.exists() and live.stat().st_ino == segment.stat().st_ino
        finally:
            await origin.close()
    if set(cpu) != {"rec", "plain"}:
        raise SystemExit(f"broken run: worker CPU of {sorted(cpu)} only")
    return {
        "recorded": cpu["rec"],
        "unrecorded": cpu["plain"],
        "ready": ready,
        "images": images,
        "duration": info["duration"],
        "shared": shared / max(1, total),
        "segments": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--size", default="854x480")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):
        result = asyncio.run(one_round(args.seconds, args.size, recorded_first=i % 2 == 0))
        print(result, flush=True)
        rounds.append(result)
    ratios = [r["recorded"] / r["unrecorded"] for r in rounds]
    rows = "\n".join(
        f"| {i + 1} | {'recorded' if i % 2 == 0 else 'unrecorded'} | {r['recorded']:.1f} | "
        f"{r['unrecorded']:.1f} | {r['recorded'] / r['unrecorded']:.3f} | {r['ready']:.2f} | "
        f"{r['images']:.2f} | {r['duration']:.1f} | {r['shared']:.0%} of {r['segments']} |"
        for i, r in enumerate(rounds)
    )
    load = os.getloadavg()[0]
    text = (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.rounds} rounds of {args.seconds} s "
        f"of {args.size}@30 (ladder 480p + 360p, x264), both streams at once; machine shared "
        f"with other work (load average {load:.1f} on 2 CPUs): noisy.\n\n"
        "| round | first publish | worker CPU s, recorded | worker CPU s, unrecorded | "
        "ratio | end → asset ready (s) | end → poster (s) | recorded duration (s) | "
        "asset segments = live inodes |\n|---|---|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        f"Recorded / unrecorded worker CPU: **{statistics.mean(ratios):.3f}** (mean of "
        f"{len(ratios)}; 1.0 = recording costs nothing in the transcoder)."
    )
    print(text)
    if not args.no_write:
        write_block("recording", "## Live recording: CPU of a recorded vs unrecorded stream "
                    "(`python -m bench.recording`)", text)  # fmt: skip


if __name__ == "__main__":
    main()
