"""Multi-host: NATS, the origin and edges each in their own network namespace (their own
network stack and address, joined by veth pairs on a bridge), talking only over that
network. ffmpeg publishes over RTMP and libavformat plays through the edges while hosts
fail. Needs root (ip netns); skipped with the reason printed where namespaces are impossible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.201.0"
BRIDGE_IP = f"{SUBNET}.254"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Hosts:
    """Namespaces ``<prefix>-<name>`` with one address each on a private bridge."""

    def __init__(self, tmp: Path) -> None:
        self.tag = f"mc{os.getpid() % 100000}"
        self.bridge = f"{self.tag}br"
        self.tmp = tmp
        self.hosts: dict[str, tuple[str, str]] = {}  # name -> (namespace, root-side veth)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def setup_bridge(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def add(self, name: str, index: int) -> str:
        ns, veth = f"{self.tag}-{name}", f"{self.tag}v{index}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", self.bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.hosts[name] = (ns, veth)
        return f"{SUBNET}.{index}"

    def run(self, name: str, key: str, *cmd: str) -> subprocess.Popen[bytes]:
        ns = self.hosts[name][0]
        with (self.tmp / f"{key}.log").open("ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self.procs[key] = proc
        return proc

    def kill(self, key: str, crash: bool = False) -> None:
        proc = self.procs.pop(key)
        if crash:  # no goodbye: SIGKILL, as a host losing power
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def unplug(self, name: str) -> None:
        sh("ip", "link", "set", self.hosts[name][1], "down")

    def teardown(self) -> None:
        for key in list(self.procs):
            with contextlib.suppress(Exception):
                self.kill(key)
        for ns, veth in self.hosts.values():
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts(tmp_path)
    probe = f"{h.tag}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        reason = f"network namespaces unavailable here: {made.stderr.strip() or made.returncode}"
        print(reason)
        pytest.skip(reason)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    try:
        h.setup_bridge()
        yield h
    finally:
        h.teardown()


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return dict(json.loads(response.read()))


async def until(check: object, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


def peers_of(edge: str) -> list[str]:
    return list(get_json(f"{edge}/healthz")["peers_alive"])  # type: ignore[call-overload]


async def plays(url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-i", url, "-map", "0", "-t", "3", "-f", "null", "-",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{url}: {err.decode()[-500:]}"


async def test_origin_nats_and_edges_on_separate_hosts(hosts: Hosts, tmp_path: Path) -> None:
    nats_bin, ffmpeg = shutil.which("nats-server"), shutil.which("ffmpeg")
    assert nats_bin and ffmpeg, "run `make test`: it installs nats-server and ffmpeg"
    py = [sys.executable, "-m", "meshcast.cli", "--log-level", "INFO"]
    nats_ip = hosts.add("nats", 1)
    origin_ip = hosts.add("origin", 2)
    edge_ips = [hosts.add(f"edge{i}", 3 + i) for i in range(3)]
    bus = f"nats://{nats_ip}:4222"
    nats_cmd = [nats_bin, "-a", nats_ip, "-p", "4222", "-js", "-sd", str(tmp_path / "js")]
    hosts.run("nats", "nats", *nats_cmd)
    data = tmp_path / "origin"
    key = subprocess.run(
        [*py, "keys", "create", "net", "--data", str(data)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    hosts.run("origin", "origin", *py, "origin", "--data", str(data), "--host", origin_ip,
              "--http-port", "8080", "--rtmp-port", "1935", "--ladder", "360:600",
              "--bus", bus)  # fmt: skip
    origin = f"http://{origin_ip}:8080"
    edges = [f"http://{ip}:8081" for ip in edge_ips]

    def start_edge(i: int) -> None:
        hosts.run(f"edge{i}", f"edge{i}", *py, "edge", "--origin", origin, "--host",
                  edge_ips[i], "--port", "8081", "--bus", bus,
                  "--cache-dir", str(tmp_path / f"edge{i}"))  # fmt: skip

    start_edge(0)
    start_edge(1)
    await until(lambda: get_json(f"{origin}/healthz"), 30, "origin")
    # No --peer anywhere: each edge learns the other from NATS heartbeats.
    await until(lambda: peers_of(edges[0]) == [edges[1]], 30, "edge0 learning edge1")
    await until(lambda: peers_of(edges[1]) == [edges[0]], 30, "edge1 learning edge0")
    push = await asyncio.create_subprocess_exec(
        ffmpeg, "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=440", "-t", "150", "-c:v", "libx264",
        "-preset", "ultrafast", "-tune", "zerolatency", "-g", "50", "-c:a", "aac",
        "-f", "flv", f"rtmp://{origin_ip}:1935/live/{key}",
    )  # fmt: skip
    try:
        master = "/live/net/master.m3u8"
        await until(lambda: get_json(f"{origin}/api/streams/net")["state"] == "live", 30, "live")
        await asyncio.sleep(4)  # a couple of segments
        await plays(edges[0] + master)
        await plays(edges[1] + master)
        # Edge host 1 dies (killed, cable pulled; no "node.left"): edge 0 serves alone and
        # drops it from the ring (health checks, heartbeat silence).
        hosts.kill("edge1", crash=True)
        hosts.unplug("edge1")
        await plays(edges[0] + master)
        await until(lambda: peers_of(edges[0]) == [], 30, "edge0 dropping edge1")
        # The NATS host dies: delivery does not depend on the bus.
        hosts.kill("nats", crash=True)
        await plays(edges[0] + master)
        # NATS comes back; a new edge joins the running ring without restarting anyone.
        hosts.run("nats", "nats", *nats_cmd)
        start_edge(2)
        await until(lambda: edges[2] in peers_of(edges[0]), 45, "edge0 learning edge2")
        await until(lambda: peers_of(edges[2]) == [edges[0]], 45, "edge2 learning edge0")
        await plays(edges[2] + master)
    finally:
        push.kill()
        await push.wait()
