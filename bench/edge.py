"""Edge req/s vs nginx on cached 1 MiB segments, and origin fetches under a viewer burst.

One nginx serves random segments: as the edges' origin, as the comparison target, and rate-
limited (the cold-edge burst). Each edge variant runs as its own process (``--serve``:
asyncio+h11, asyncio+httptools, uvloop+httptools), warmed first; wrk runs against every server
in turn. From the repository root: ``.venv/bin/python -m bench.edge [--no-write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import httpx

RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- edge:start -->", "<!-- edge:end -->"
HOST, SEG = "http://127.0.0.1:", "/live/bench/360p/{}.m4s"
VARIANTS = {"asyncio+h11": "plain", "asyncio+httptools": "httptools", "uvloop+httptools": "fast"}
FETCHES = re.compile(r"^meshcast_edge_origin_fetches_total (\S+)$", re.MULTILINE)
HZ = os.sysconf("SC_CLK_TCK")
Proc = subprocess.Popen[bytes]
Burst = tuple[int, Counter[str], float]  # origin fetches, X-Cache labels, seconds
NGINX = """{user}worker_processes 2;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  sendfile on; tcp_nopush on; access_log off; keepalive_requests 1000000;
  types {{ video/iso.segment m4s; }}
  client_body_temp_path {tmp}/t1; proxy_temp_path {tmp}/t2; fastcgi_temp_path {tmp}/t3;
  uwsgi_temp_path {tmp}/t4; scgi_temp_path {tmp}/t5;
  server {{ listen 127.0.0.1:{origin}; root {tmp}/www; }}
  server {{ listen 127.0.0.1:{target}; root {tmp}/www; }}
  server {{ listen 127.0.0.1:{slow}; root {tmp}/www; limit_rate 512k; sendfile_max_chunk 64k; }}
}}
"""
ROTATE_LUA = """local paths = {PATHS}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[n % #paths + 1])
end
"""


class Run(NamedTuple):
    rps: float
    p99_ms: float
    server_cores: float  # CPU s / wall s of the server process (nginx: master + workers)
    wrk_cores: float
    other_cpu: float  # CPU s of everything else on the machine (other users' jobs)
    steal: float  # CPU s stolen by the hypervisor


def serve(variant: str, argv: list[str]) -> int:
    """Child mode: ``meshcast`` on the chosen event loop and HTTP parser, whatever its defaults."""
    if variant == "plain":
        sys.modules["httptools"] = None  # type: ignore[assignment]  # uvicorn falls back to h11
    with contextlib.suppress(ImportError):
        import uvloop

        if variant == "fast":  # a CLI calling asyncio.run() picks the policy up
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        else:  # a CLI running asyncio.Runner(loop_factory=uvloop.new_event_loop) gets asyncio
            uvloop.new_event_loop = asyncio.new_event_loop  # type: ignore[assignment]
    from meshcast.cli import main

    return main(argv)


def fingerprint() -> str:
    """Short hash of the edge's sources: others edit them while benchmarks run."""
    root = Path(__file__).resolve().parent.parent
    files = sorted([*root.glob("edge/*.py"), *root.glob("meshcast/*.py")])
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]


def cpu_stat() -> tuple[float, float]:
    """Machine-wide (busy, stolen) CPU seconds."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(f[i] for i in (0, 1, 2, 5, 6)) / HZ, f[7] / HZ


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its children."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ + sum(proc_cpu(int(k)) for k in kids)


def children_cpu() -> float:  # wrk, once waited for
    return sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {within:.0f} s")


def start(procs: list[Proc], cmd: list[str], log: Path, ready: str) -> int:
    with log.open("wb") as out:
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
    wait_http(ready)
    return procs[-1].pid


def start_edge(procs: list[Proc], tmp: Path, variant: str, origin: int, name: str) -> str:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.edge", "--serve", variant, "edge", "--origin"]
    cmd += [f"{HOST}{origin}", "--port", str(port), "--cache-mem", "512M", "--cache-dir"]
    start(procs, [*cmd, str(tmp / name)], tmp / f"{name}.log", f"{HOST}{port}/healthz")
    return f"{HOST}{port}"


def stop(proc: Proc) -> None:
    proc.terminate()  # nginx (daemon off) and the edge stop cleanly on SIGTERM
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def warm(url: str, www: Path, n: int) -> None:
    with httpx.Client(base_url=url, timeout=10.0) as client:
        for path in (SEG.format(i) for i in range(n)):
            body = (www / path.lstrip("/")).read_bytes()
            for want in ("MISS", "HIT"):
                r = client.get(path)
                got = r.headers.get("x-cache")
                if r.status_code != 200 or got != want or r.content != body:
                    raise SystemExit(f"{url}{path}: {r.status_code} {got}, want {want} + body")


def wait_quiet(limit: float = 0.2, patience: float = 180.0) -> None:
    """Wait up to ``patience`` s until the machine (other jobs) uses < ``limit`` cores for 1 s."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        busy = cpu_stat()[0]
        time.sleep(1.0)
        if cpu_stat()[0] - busy < limit:
            return
    print(f"warning: machine still busy after {patience:.0f} s, measuring anyway", flush=True)


def wrk(url: str, pid: int, script: Path, conns: int, secs: int) -> Run:
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-s", str(script), url]
    (busy, steal), server, wrk_cpu = cpu_stat(), proc_cpu(pid), children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "Socket errors" in out or "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors against {url}:\n{out}")
    server, wrk_cpu = proc_cpu(pid) - server, children_cpu() - wrk_cpu
    other = max(0.0, cpu_stat()[0] - busy - server - wrk_cpu)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    value, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return Run(rps, p99, server / secs, wrk_cpu / secs, other, cpu_stat()[1] - steal)


async def viewer(port: int, path: str, go: asyncio.Event) -> str:
    """One viewer on its own connection, opened before ``go``; returns X-Cache."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await go.wait()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    size = re.search(r"\r\ncontent-length: *(\d+)", head)
    body = await reader.readexactly(int(size[1])) if size else b""
    writer.close()
    if not head.startswith("http/1.1 200") or len(body) != 1 << 20:
        raise RuntimeError(f"viewer of {path}: {head.splitlines()[0]}, {len(body)} bytes")
    return re.search(r"\r\nx-cache: *(\w+)", head)[1].upper()  # type: ignore[index]


async def burst(url: str, path: str, viewers: int) -> Burst:
    """``viewers`` simultaneous GETs of one uncached path, connections opened first."""

    def fetches() -> float:
        return float(FETCHES.search(httpx.get(f"{url}/metrics").text)[1])  # type: ignore[index]

    before, go, port = fetches(), asyncio.Event(), int(url.rsplit(":", 1)[1])
    tasks = [asyncio.create_task(viewer(port, path, go)) for _ in range(viewers)]
    await asyncio.sleep(1.0)  # every connection open (uvicorn's backlog is 2048)
    go.set()
    began = time.monotonic()
    labels = Counter(await asyncio.gather(*tasks))
    return int(fetches() - before), labels, time.monotonic() - began


def report(args: argparse.Namespace, load: float, results: dict[str, list[Run]],
           bursts: dict[str, list[Burst]], code: str) -> str:  # fmt: skip
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    mean = {k: statistics.mean(r.rps for r in v) for k, v in results.items()}
    best = {k: max(r.rps for r in v) for k, v in results.items()}
    rows = ["| server | req/s best | req/s mean | p99 ms per run | vs nginx best / mean | cores "
            "busy server / wrk | req per server CPU s | other CPU s / steal s per run |",
            "|---" * 8 + "|"]  # fmt: skip
    for k, runs in results.items():
        cores = statistics.mean(r.server_cores for r in runs)
        rows.append(f"| {k} | {best[k]:.0f} | {mean[k]:.0f} | "
                    f"{', '.join(f'{r.p99_ms:.0f}' for r in runs)} | "
                    f"{best[k] / best['nginx']:.2f}x / {mean[k] / mean['nginx']:.2f}x | "
                    f"{cores:.2f} / {statistics.mean(r.wrk_cores for r in runs):.2f} | "
                    f"{mean[k] / cores:.0f} | "
                    f"{', '.join(f'{r.other_cpu:.1f}/{r.steal:.1f}' for r in runs)} |")  # fmt: skip
    top = max((k for k in mean if k != "nginx"), key=lambda k: mean[k])
    goal = mean[top] / mean["nginx"]
    single = all(b[0] == 1 for bs in bursts.values() for b in bs)
    lines = [
        START, f"- date: `{date}`; edge sources (edge/, meshcast/) sha256 `{code}`",
        f"- machine: {os.cpu_count()} vCPUs shared by wrk (2 threads), nginx (2 workers) and the "
        f"edge (1 process: 1 core at most); 1-min load {load:.2f} at start; loopback only",
        "- reproduce: `.venv/bin/python -m bench.edge` (needs `apt-get install -y nginx wrk`; "
        "without uvloop/httptools installed only asyncio+h11 is measured)",
        f"- load: {args.segments} x 1 MiB segments, `wrk -t2 -c{args.connections} "
        f"-d{args.duration}s --latency` rotating over them, {args.runs} runs per server, "
        "alternating; edges warmed first (MISS then HIT, bodies compared)", "", *rows, "",
        f"- goal (fastest edge >= 0.5x nginx, mean req/s): **{'met' if goal >= 0.5 else 'NOT met'}"
        f"** ({top}: {goal:.2f}x)",
        f"- origin fetches per segment, {args.viewers} simultaneous GETs (connections opened "
        "first) on a cold edge whose origin sends 512 KB/s (~1.9 s per segment), 3 segments: "
        f"**{'exactly 1 each' if single else 'NOT 1 each'}**",
    ]  # fmt: skip
    for k, bs in bursts.items():
        labels = "; ".join(", ".join(f"{n} {c}" for c, n in sorted(b[1].items())) for b in bs)
        secs = ", ".join(f"{b[2]:.2f}" for b in bs)
        lines.append(f"  - {k}: fetches {[b[0] for b in bs]}; X-Cache {labels}; all {args.viewers}"
                     f" served in {secs} s")  # fmt: skip
    lines += [f"- {k}: {mean[k] / mean['asyncio+h11'] - 1:+.0%} mean req/s vs asyncio+h11"
              for k in mean if k not in ("nginx", "asyncio+h11")]  # fmt: skip
    return "\n".join([*lines, END])


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:  # child: python -m bench.edge --serve VARIANT edge ...
        sys.exit(serve(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--viewers", type=int, default=500)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    if missing := [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install -y nginx wrk")
    variants = dict(VARIANTS)
    try:
        import httptools  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError:
        print("uvloop/httptools missing (.venv/bin/pip install uvloop httptools): "
              "measuring asyncio+h11 only", file=sys.stderr)  # fmt: skip
        variants = {"asyncio+h11": "plain"}
    load, procs, code = os.getloadavg()[0], list[Proc](), fingerprint()
    results: dict[str, list[Run]] = {"nginx": [], **{k: [] for k in variants}}
    bursts: dict[str, list[Burst]] = {}
    with tempfile.TemporaryDirectory(prefix="meshcast-edge-bench-") as name:
        tmp = Path(name)
        try:
            for i in range(args.segments):
                seg = tmp / "www" / SEG.format(i).lstrip("/")
                seg.parent.mkdir(parents=True, exist_ok=True)
                seg.write_bytes(os.urandom(1 << 20))
            ports = {"origin": free_port(), "target": free_port(), "slow": free_port()}
            user = "user root;\n" if os.geteuid() == 0 else ""
            (tmp / "nginx.conf").write_text(NGINX.format(user=user, tmp=tmp, **ports))
            cmd = ["nginx", "-p", str(tmp), "-e", f"{tmp}/nginx.log", "-c", f"{tmp}/nginx.conf"]
            ready = f"{HOST}{ports['target']}{SEG.format(0)}"
            pid = start(procs, [*cmd, "-g", "daemon off;"], tmp / "nginx.out", ready)
            servers = {"nginx": (pid, f"{HOST}{ports['target']}")}
            for label, variant in variants.items():
                url = start_edge(procs, tmp, variant, ports["origin"], f"edge-{variant}")
                servers[label] = procs[-1].pid, url
                warm(url, tmp / "www", args.segments)
            paths = ", ".join(f'"{SEG.format(i)}"' for i in range(args.segments))
            (script := tmp / "rotate.lua").write_text(ROTATE_LUA.replace("PATHS", paths))
            for i in range(args.runs):
                for label, (pid, url) in servers.items():
                    wait_quiet()
                    r = wrk(url, pid, script, args.connections, args.duration)
                    results[label].append(r)
                    print(f"run {i + 1} {label}: {r.rps:.0f} req/s, p99 {r.p99_ms:.1f} ms, "
                          f"other CPU {r.other_cpu:.1f} s", flush=True)  # fmt: skip
            for proc in procs[1:]:
                stop(proc)
            for label, variant in variants.items():  # fresh edges: cold caches, slow origin
                url = start_edge(procs, tmp, variant, ports["slow"], f"cold-{variant}")
                bursts[label] = [asyncio.run(burst(url, SEG.format(i), args.viewers))
                                 for i in range(3)]  # fmt: skip
                stop(procs[-1])
                print(f"{label}: origin fetches, X-Cache, s: {bursts[label]}", flush=True)
        finally:
            for proc in reversed(procs):
                stop(proc)
    if fingerprint() != code:
        code += f" -> {fingerprint()}: SOURCES CHANGED DURING THE RUN, numbers mix versions"
        print(f"warning: edge sources changed during the run ({code})", file=sys.stderr)
    block = report(args, load, results, bursts, code)
    print("\n" + block)
    if not args.no_write:
        text = RESULTS.read_text()
        if START in text and END in text:
            text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n## Edge\n\n" + block + "\n"
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
