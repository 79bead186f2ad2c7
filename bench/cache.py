"""Miss ratio vs cache size per policy on three generated workloads (`meshcast bench cache`
internals), plotted as PNG and tabulated in bench/RESULTS.md.

Run from the repository root: ``.venv/bin/pip install -e '.[bench]'`` then
``.venv/bin/python -m bench.cache`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import tempfile
from pathlib import Path

from bench.results import write_block
from edge.simulate import simulate, working_set_bytes
from edge.tracegen import Workload, write_trace

HERE = Path(__file__).parent
WORKLOADS = {"mixed": (11, 0.5), "live-heavy": (12, 0.1), "vod-heavy": (13, 0.9)}
SIZES = (1, 2, 5, 10, 20, 30)
POLICIES = ("lru", "s3fifo", "sieve", "ml", "prefetch")


def _run(job: tuple[str, Path, str, int]) -> tuple[str, str, int, float, int]:
    workload, trace, policy, percent = job
    capacity = int(working_set_bytes(trace) * percent / 100)
    r = simulate(trace, policy, capacity).to_json()
    return workload, policy, percent, r["byte_miss_ratio"], r["origin_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=600.0)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        traces = {}
        for name, (seed, vod_share) in WORKLOADS.items():
            traces[name] = Path(tmp) / f"{name}.csv"
            write_trace(
                Workload(seed=seed, duration_s=args.duration, vod_share=vod_share), traces[name]
            )
        jobs = [(w, t, p, s) for w, t in traces.items() for p in POLICIES for s in SIZES]
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            rows = pool.map(_run, jobs)
    miss = {(w, p, s): m for w, p, s, m, _ in rows}
    origin = {(w, p, s): o for w, p, s, _, o in rows}
    lines = [
        f"- date: `{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC`; traces: "
        f"`meshcast bench gen-trace --duration {args.duration:.0f}` with seeds/vod-share "
        + ", ".join(f"{w} {s}/{v}" for w, (s, v) in WORKLOADS.items()),
        "- byte miss ratio (lower is better); `prefetch` = LRU + next segment of the same "
        "rendition (its prefetched bytes count as origin bytes)",
        "",
    ]
    for w in traces:
        fig, ax = plt.subplots(figsize=(6, 4))
        for p in POLICIES:
            ax.plot(SIZES, [miss[(w, p, s)] for s in SIZES], marker="o", label=p)
        ax.set(title=f"{w}: byte miss ratio", xlabel="cache size (% of distinct bytes)",
               ylabel="byte miss ratio")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(HERE / f"cache-{w}.png", dpi=100)
        plt.close(fig)
        lines.append(f"**{w}** (`bench/cache-{w}.png`)")
        lines.append("")
        lines.append("| policy | " + " | ".join(f"{s}%" for s in SIZES) + " |")
        lines.append("|---|" + "---|" * len(SIZES))
        for p in POLICIES:
            lines.append(f"| {p} | " + " | ".join(f"{miss[(w, p, s)]:.4f}" for s in SIZES) + " |")
        lines.append("")
        extra = origin[(w, "prefetch", 10)] / origin[(w, "lru", 10)] - 1
        lines.append(
            f"prefetch at 10%: client byte hit ratio {1 - miss[(w, 'prefetch', 10)]:.3f}, origin "
            f"bytes {extra:+.1%} vs LRU (prefetched bytes count; the simulator treats a segment "
            "as existing when the trace requests it at some point)"
        )
        lines.append("")
    block = "\n".join(lines)
    write_block("cache", "### Miss ratio vs cache size", block)
    print(block)


if __name__ == "__main__":
    main()
