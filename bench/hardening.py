"""What issue 20's limits cost on the normal path: ours against the code before them (the
merge base with main, loaded from git), side by side in one run, alternating.

- AMF0: decodes/s of FFmpeg's onMetaData and an OBS connect command (limits counted on
  every value);
- RTMP core: messages/s of an OBS-like publish (handshake, commands, 3000 media
  messages) through the sans-IO connection (pre-publish budget, gate, AMF0 limits);
- HTTP: requests/s of ``GET /healthz`` and of a 1 KiB JSON ``POST`` read with the body
  helper, each server (before: the old ``HttpService``; ours: head limits, connection
  budgets, BodyGuard, ``read_body``) in its own process, 32 keep-alive connections from a
  client process.

    .venv/bin/python -m bench.hardening [--seconds 4] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.results import write_block

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"viewer": "v" * 1000}).encode()


def base_revision() -> str:
    return subprocess.run(
        ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def load_before(rev: str, package: str, files: dict[str, str]) -> dict[str, types.ModuleType]:
    """Modules as they were at ``rev``, as ``package.NAME`` (imports between them
    rewritten to stay inside the package)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-before-"))
    pkg = tmp / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, path in files.items():
        text = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        for other, other_path in files.items():
            dotted = other_path.removesuffix(".py").replace("/", ".")
            parent, _, leaf = dotted.rpartition(".")
            text = text.replace(f"from {parent} import {leaf}", f"from {package} import {other}")
            text = text.replace(f"from {dotted} import", f"from {package}.{other} import")
        (pkg / f"{name}.py").write_text(text)
    sys.path.insert(0, str(tmp))
    modules = {}
    for name in files:
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", pkg / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"{package}.{name}"] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


def best_rates(
    fns: dict[str, Callable[[], Any]], per_call: dict[str, int], seconds: float
) -> dict[str, float]:
    """Calls per second (times ``per_call``) of each side: batches alternate between the
    sides, the best batch of each counts (the least disturbed by the machine's load)."""
    number = {
        side: max(1, int(seconds / 40 / max(timeit.timeit(fn, number=1), 1e-6)))
        for side, fn in fns.items()
    }
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(20):
        for side, fn in fns.items():
            best[side] = min(best[side], timeit.timeit(fn, number=number[side]) / number[side])
    return {side: per_call[side] / best[side] for side in fns}


# ---- AMF0 and RTMP ------------------------------------------------------------------------


def rtmp_session(media: int) -> bytes:
    from origin import amf0
    from origin.rtmp_chunk import MessageType
    from origin.rtmp_protocol import HANDSHAKE_SIZE
    from tests.rtmp_client import ScriptedPublisher, handshake_c0c1, handshake_c2
    from tests.unit.test_rtmp_protocol import AVC_FRAME, AVC_SEQ, KEY

    pub = ScriptedPublisher(chunk_size=4096).obs_connect_sequence(KEY)
    pub.obs_publish_sequence(KEY)
    pub.data("@setDataFrame", "onMetaData", amf0.EcmaArray(width=1280.0, height=720.0))
    pub.media(MessageType.VIDEO, 0, AVC_SEQ)
    frame = AVC_FRAME + bytes(4000)
    for i in range(media):
        pub.media(MessageType.VIDEO, 33 * (i + 1), frame)
    s1 = b"\x00\x00\x00\x63" + bytes(4) + b"\x07" * (HANDSHAKE_SIZE - 8)
    return handshake_c0c1() + handshake_c2(s1) + pub.take()


def run_core(connection_class: Any, session: bytes) -> int:
    """Feed a whole session in 64 KiB reads (as the server reads), accepting connect and
    publish; returns the events seen."""
    conn = connection_class(clock=lambda: 99, random_bytes=lambda n: b"\x07" * n)
    seen = 0
    for pos in range(0, len(session), 65536):
        batch = conn.receive_data(session[pos : pos + 65536])
        while batch:
            for event in batch:
                seen += 1
                name = type(event).__name__
                if name == "ConnectRequest":
                    conn.accept_connect(event.transaction_id)
                elif name == "PublishRequest":
                    conn.accept_publish(event.stream_id)
            batch = conn.receive_data(b"") if conn.has_pending else []
    return seen


def bench_rtmp(rev: str, seconds: float) -> dict[str, Any]:
    from origin import amf0, rtmp_protocol
    from tests.unit.test_amf0 import FFMPEG_METADATA

    before = load_before(
        rev,
        "before_origin",
        {
            "amf0": "origin/amf0.py",
            "rtmp_chunk": "origin/rtmp_chunk.py",
            "rtmp_protocol": "origin/rtmp_protocol.py",
        },
    )
    connect = amf0.encode(
        "connect",
        1.0,
        {
            "app": "live",
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; FMSc/1.0)",
            "tcUrl": "rtmp://127.0.0.1/live",
        },
    )
    session = rtmp_session(3000)
    sides = {"before": before["amf0"], "ours": amf0}
    cores = {"before": before["rtmp_protocol"], "ours": rtmp_protocol}
    out: dict[str, Any] = {}
    one = {"before": 1, "ours": 1}
    for label, payload in (("amf0_metadata", FFMPEG_METADATA), ("amf0_connect", connect)):
        fns = {side: (lambda m=mod, p=payload: m.decode(p)) for side, mod in sides.items()}
        out[label] = best_rates(fns, one, seconds)
    events = {side: run_core(mod.RtmpServerConnection, session) for side, mod in cores.items()}
    assert events["before"] == events["ours"], events
    fns = {
        side: (lambda m=mod: run_core(m.RtmpServerConnection, session))
        for side, mod in cores.items()
    }
    out["rtmp_messages"] = best_rates(fns, events, seconds)
    return out


# ---- HTTP -----------------------------------------------------------------------------------


def serve(side: str, port: int, rev: str) -> None:
    """A tiny app behind the ``side`` HttpService: GET /healthz, POST /echo."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if side == "before":
        http = load_before(rev, "before_meshcast", {"http": "meshcast/http.py"})["http"]

        async def read(request: Request) -> bytes:
            return await request.body()  # what the coordinator did before
    else:
        import meshcast.http as http
        from meshcast.bodies import read_body

        async def read(request: Request) -> bytes:
            return await read_body(request, 16 * 1024)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await read(request))})

    app = Starlette(routes=[Route("/healthz", healthz), Route("/echo", echo, methods=["POST"])])

    async def main() -> None:
        service = http.HttpService(app, "127.0.0.1", port, side)
        await service.start()
        await asyncio.Event().wait()

    import uvloop

    uvloop.run(main())


def load(port: int, path: str, seconds: float, connections: int, queue: Any) -> None:
    """Requests/s from ``connections`` keep-alive connections (own process)."""
    if path == "/echo":
        request = (
            b"POST /echo HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY
        )
    else:
        request = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n"

    async def client(deadline: float, counts: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            counts[0] += 1
        writer.close()

    async def main() -> float:
        counts = [0]
        start = time.monotonic()
        await asyncio.gather(*(client(start + seconds, counts) for _ in range(connections)))
        return counts[0] / (time.monotonic() - start)

    import uvloop

    queue.put(uvloop.run(main()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def bench_http(rev: str, seconds: float, rounds: int) -> dict[str, dict[str, list[float]]]:
    ctx = multiprocessing.get_context("spawn")
    servers = {}
    for side in ("before", "ours"):
        port = free_port()
        proc = ctx.Process(target=serve, args=(side, port, rev), daemon=True)
        proc.start()
        servers[side] = (port, proc)
    for port, _ in servers.values():
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "bench server did not start"
                time.sleep(0.1)
    results: dict[str, dict[str, list[float]]] = {}

    def measure(port: int, path: str, duration: float) -> float:
        queue = ctx.Queue()
        proc = ctx.Process(target=load, args=(port, path, duration, 32, queue))
        proc.start()
        rate: float = queue.get(timeout=duration + 60)
        proc.join()
        return rate

    try:
        for path in ("/healthz", "/echo"):
            results[path] = {"before": [], "ours": []}
            for port, _ in servers.values():
                measure(port, path, 1.0)  # warm-up, not counted
            for _ in range(rounds):
                for side, (port, _) in servers.items():
                    results[path][side].append(measure(port, path, seconds))
    finally:
        for _, proc in servers.values():
            proc.kill()
    return results


def ratio(d: dict[str, float]) -> str:
    return f"{d['ours'] / d['before']:.2f}"


def report(rev: str, rtmp: dict[str, Any], http: dict[str, dict[str, list[float]]]) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, before = merge base "
        f"`{rev[:10]}`, load average {load:.1f} on {os.cpu_count()} shared CPUs (other "
        "sessions were running: compare the two columns of one run, not across runs).",
        "",
        "| normal path | before | ours | ours / before |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "amf0_metadata": "AMF0 decode, FFmpeg onMetaData (decodes/s)",
        "amf0_connect": "AMF0 decode, OBS connect command (decodes/s)",
        "rtmp_messages": "RTMP core, OBS-like publish, 3000 media messages (messages/s)",
    }
    for key, label in names.items():
        d = rtmp[key]
        lines.append(f"| {label} | {d['before']:,.0f} | {d['ours']:,.0f} | {ratio(d)} |")
    for path, label in (("/healthz", "HTTP GET /healthz"), ("/echo", "HTTP POST 1 KiB JSON")):
        d = {side: statistics.median(v) for side, v in http[path].items()}
        rounds = len(http[path]["ours"])
        lines.append(
            f"| {label} (req/s, median of {rounds}, 32 conns) | {d['before']:,.0f} | "
            f"{d['ours']:,.0f} | {ratio(d)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rev = base_revision()
    rtmp = bench_rtmp(rev, args.seconds)
    http = bench_http(rev, args.seconds, args.rounds)
    text = report(rev, rtmp, http)
    print(text)
    if not args.no_write:
        write_block(
            "hardening",
            "## Hardening limits on the normal path (`python -m bench.hardening`)",
            text,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
