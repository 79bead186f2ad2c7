"""Storage plugin throughput: boto3 PUT/GET of 1 MB and 64 MB objects against a 2-edge ring
(k=2 replication, real ``meshcast edge`` processes), vs GET of the same files from nginx.

The GET comparison uses one client for both servers (httpx, presigned URLs for the edge), so
the ratio is about the servers; boto3's own GET figure is reported too. Single client,
sequential requests. From the repository root: ``.venv/bin/python -m bench.storage
[--no-write]`` (needs Debian's nginx).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import botocore.config
import httpx

from bench.edge import HOST, Proc, free_port, start, stop

RESULTS = Path(__file__).with_name("RESULTS.md")
START, END = "<!-- storage:start -->", "<!-- storage:end -->"
NGINX = """{user}worker_processes 1;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  sendfile on; tcp_nopush on; access_log off;
  client_body_temp_path {tmp}/t1; proxy_temp_path {tmp}/t2; fastcgi_temp_path {tmp}/t3;
  uwsgi_temp_path {tmp}/t4; scgi_temp_path {tmp}/t5;
  server {{ listen 127.0.0.1:{port}; root {tmp}/www; }}
}}
"""
SIZES = {"1 MB": (1_000_000, 40), "64 MB": (64_000_000, 3)}


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def timed_get(client: httpx.Client, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    size = 0
    with client.stream("GET", url) as r:
        r.raise_for_status()
        for chunk in r.iter_raw(1 << 20):
            size += len(chunk)
    return size, time.perf_counter() - started


def run(tmp: Path, procs: list[Proc]) -> dict[str, dict[str, float]]:
    data = tmp / "data"
    keys = [sys.executable, "-m", "meshcast.cli", "keys", "create", "bench", "--kind", "s3"]
    out = subprocess.run(
        [*keys, "--data", str(data)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    access_key, secret = out.split()
    ports = [free_port(), free_port()]
    urls = [f"{HOST}{p}" for p in ports]
    for port in ports:
        cmd = [sys.executable, "-m", "meshcast.cli", "edge", "--origin", f"{HOST}9"]
        cmd += ["--port", str(port), "--plugin", "storage", "--data", str(data)]
        cmd += ["--cache-dir", str(tmp / f"edge-{port}")]
        cmd += [arg for u in urls if u != f"{HOST}{port}" for arg in ("--peer", u)]
        start(procs, cmd, tmp / f"edge-{port}.log", f"{HOST}{port}/healthz")
    nginx_port = free_port()
    (tmp / "www").mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(NGINX.format(user=user, tmp=tmp, port=nginx_port))
    (tmp / "www" / "ready").write_bytes(b"ok")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    cmd = [nginx, "-p", str(tmp), "-e", f"{tmp}/nginx.log", "-c", f"{tmp}/nginx.conf"]
    start(procs, [*cmd, "-g", "daemon off;"], tmp / "nginx.out", f"{HOST}{nginx_port}/ready")

    s3 = boto3.client(
        "s3",
        endpoint_url=f"{urls[0]}/s3",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    s3.create_bucket(Bucket="bench")
    results: dict[str, dict[str, float]] = {}
    with httpx.Client(timeout=120) as http:
        for label, (size, count) in SIZES.items():
            bodies = [os.urandom(size) for _ in range(count)]
            names = [f"{label.replace(' ', '')}-{i}" for i in range(count)]
            for name, body in zip(names, bodies, strict=True):
                (tmp / "www" / name).write_bytes(body)
            started = time.perf_counter()
            for name, body in zip(names, bodies, strict=True):
                s3.put_object(Bucket="bench", Key=name, Body=body)
            put = mbps(size * count, time.perf_counter() - started)
            started = time.perf_counter()
            for name, body in zip(names, bodies, strict=True):
                got = s3.get_object(Bucket="bench", Key=name)["Body"].read()
                assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
            boto_get = mbps(size * count, time.perf_counter() - started)
            edge_s = nginx_s = 0.0
            for _ in range(3):  # interleaved so background load hits both alike
                for name in names:
                    presigned = s3.generate_presigned_url(
                        "get_object", Params={"Bucket": "bench", "Key": name}, ExpiresIn=600
                    )
                    n, seconds = timed_get(http, presigned)
                    assert n == size
                    edge_s += seconds
                    n, seconds = timed_get(http, f"{HOST}{nginx_port}/{name}")
                    assert n == size
                    nginx_s += seconds
            edge_get = mbps(3 * size * count, edge_s)
            nginx_get = mbps(3 * size * count, nginx_s)
            results[label] = {
                "put": put,
                "boto_get": boto_get,
                "edge_get": edge_get,
                "nginx_get": nginx_get,
                "count": count,
            }
            print(
                f"{label}: PUT {put:.1f} MB/s, GET boto3 {boto_get:.1f} MB/s, GET httpx edge "
                f"{edge_get:.1f} MB/s vs nginx {nginx_get:.1f} MB/s ({edge_get / nginx_get:.2f}x)",
                flush=True,
            )
    return results


def write_results(results: dict[str, dict[str, float]], load: float) -> None:
    rows = [
        "| object | n | PUT boto3 MB/s | GET boto3 MB/s | GET edge MB/s | GET nginx MB/s "
        "| edge/nginx GET |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        rows.append(
            f"| {label} | {int(r['count'])} | {r['put']:.1f} | {r['boto_get']:.1f} | "
            f"{r['edge_get']:.1f} | {r['nginx_get']:.1f} | {r['edge_get'] / r['nginx_get']:.2f}x |"
        )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            START,
            "## Storage plugin (`python -m bench.storage`)",
            "",
            f"- date: `{now}`; 2 `meshcast edge --plugin storage` processes (k=2: every PUT is "
            "written to both edges' disks with fsync before the 200), one sequential client on "
            f"loopback, {os.cpu_count()} vCPUs shared with other work (load {load:.1f} at start)",
            "- PUT/GET boto3: `put_object`/`get_object` (SigV4, payload SHA-256 over http). GET "
            "edge vs nginx: the same httpx client streaming a presigned URL from the edge vs the "
            "same bytes as a static file from nginx (sendfile, page cache), 3 rounds interleaved",
            "",
            *rows,
            "",
            "An edge GET checks the SigV4 signature, fetches the manifest from the other owner "
            "and reads each 4 MiB chunk from its 64 MiB cache of verified chunks or from disk "
            "with a SHA-256 check (the 1 MB set fits that cache, the 64 MB set does not); nginx "
            "sendfiles from the page cache. The ratio is the cost of verified, replicated reads "
            "on this shared machine; reruns under other load vary by about +-0.15.",
            END,
        ]
    )
    text = RESULTS.read_text()
    if START in text:
        before, rest = text.split(START, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="meshcast-storage-bench-") as name:
        try:
            results = run(Path(name), procs)
        finally:
            for proc in reversed(procs):
                stop(proc)
    if not args.no_write:
        write_results(results, load)


if __name__ == "__main__":
    main()
