"""The `meshcast` console script as users run it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from meshcast.keys import KeyStore
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

MESHCAST = [sys.executable, "-m", "meshcast.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHCAST, *args], capture_output=True, text=True, timeout=30)


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = run("keys", "create", "cam1", "--data", str(tmp_path))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n"  # the key and nothing else on stdout
    assert re.fullmatch(r"stream_[0-9a-f]{12}_[0-9a-f]{64}", key)
    stored = (tmp_path / "keys.json").read_text()
    assert key.rsplit("_", 1)[1] not in stored  # only the hash is stored
    assert json.loads(stored)["keys"][0]["name"] == "cam1"

    dup = run("keys", "create", "cam1", "--data", str(tmp_path))
    assert dup.returncode == 1 and "exists" in dup.stderr

    listing = run("keys", "list", "--data", str(tmp_path))
    assert listing.stdout.startswith("cam1\tstream\tactive")

    assert run("keys", "revoke", "cam1", "--data", str(tmp_path)).returncode == 0
    assert "revoked" in run("keys", "list", "--data", str(tmp_path)).stdout
    again = run("keys", "revoke", "cam1", "--data", str(tmp_path))
    assert again.returncode == 1 and "no active key" in again.stderr

    bad = run("keys", "create", "../etc", "--data", str(tmp_path))
    assert bad.returncode == 1 and "invalid stream name" in bad.stderr

    quiet = run("keys", "create", "cam2", "--no-record", "--data", str(tmp_path))
    assert quiet.returncode == 0 and quiet.stdout.startswith("stream_")
    assert "cam2\tstream\tactive" in (listed := run("keys", "list", "--data", str(tmp_path)).stdout)
    assert listed.rstrip().endswith("no-record")
    assert KeyStore(tmp_path).records("cam2") is False


def test_keys_list_loads_no_media_stack(tmp_path: Path) -> None:
    """Key commands start without PyAV, aiortc or numpy: those load with the command that
    needs them (up, origin, edge, transcoder)."""
    run("keys", "create", "cam1", "--data", str(tmp_path))
    script = (
        "import sys\n"
        "from meshcast.cli import main\n"
        f"code = main(['keys', 'list', '--data', {str(tmp_path)!r}])\n"
        "print('MODULES', *sorted({m.split('.')[0] for m in sys.modules}))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cam1\tstream\tactive"), done.stdout
    loaded = set(done.stdout.rpartition("MODULES ")[2].split())
    assert {"meshcast", "argparse"} <= loaded  # the listing is what was measured
    assert not loaded & {"av", "aiortc", "numpy", "uvloop", "sklearn"}, loaded


def test_cli_defaults_are_the_config_defaults() -> None:
    from meshcast.cli import EDGE, ORIGIN, TRANSCODE, _parser

    parser = _parser()
    origin = parser.parse_args(["origin"])
    assert (origin.data, origin.http_port, origin.rtmp_port) == (
        ORIGIN.data_dir,
        ORIGIN.http_port,
        ORIGIN.rtmp_port,
    )
    assert (origin.encoder, origin.dvr_window) == (TRANSCODE.encoder, TRANSCODE.window_segments)
    edge = parser.parse_args(["edge", "--origin", "http://o", "--port", "1"])
    assert (edge.cache_mem, edge.cache_policy, edge.bandwidth) == (
        EDGE.cache_mem,
        EDGE.cache_policy,
        EDGE.bandwidth,
    )
    assert parser.parse_args(["--log-level", "debug", "origin"]).log_level == "DEBUG"
    with pytest.raises(SystemExit):
        parser.parse_args(["edge", "--origin", "o", "--port", "1", "--cache-policy", "fifo"])


def test_up_demo_ready_live_and_clean_shutdown(tmp_path: Path) -> None:
    http_port, rtmp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *MESHCAST,
            "up",
            "--demo",
            "--data",
            str(tmp_path),
            "--http-port",
            str(http_port),
            "--rtmp-port",
            str(rtmp_port),
            "--edges",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.strip() == "ready":
                break
        out = "\n".join(lines)
        assert lines and lines[-1] == "ready", out
        assert f"rtmp://127.0.0.1:{rtmp_port}/live" in out
        assert f"http://127.0.0.1:{http_port + 1}/player/?stream=demo" in out
        assert f"studio:   http://127.0.0.1:{http_port}/studio/" in out
        for port in (http_port, http_port + 1, http_port + 2):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        # the demo stream is live and moving
        deadline = time.monotonic() + 20
        frames = 0
        while time.monotonic() < deadline:
            streams = httpx.get(f"http://127.0.0.1:{http_port}/api/streams").json()["streams"]
            demo = next((s for s in streams if s["name"] == "demo"), None)
            if demo and demo["video"] and demo["video"]["frames"] >= 30:
                frames = demo["video"]["frames"]
                break
            time.sleep(0.2)
        assert demo is not None and demo["state"] == "live", demo
        assert frames >= 30
        assert (demo["video"]["codec"], demo["video"]["width"]) == ("h264", 1280)
        assert demo["audio"]["codec"] == "aac"
        # the ladder reaches viewers through an edge
        edge = f"http://127.0.0.1:{http_port + 1}/live/demo"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            master = httpx.get(f"{edge}/master.m3u8")
            if master.status_code == 200:
                break
            time.sleep(0.3)
        assert master.status_code == 200 and master.headers["x-cache"] in ("MISS", "PEER")
        assert "720p/index.m3u8" in master.text
        metrics = httpx.get(f"http://127.0.0.1:{http_port + 1}/metrics").text
        assert "meshcast_edge_origin_fetches_total" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert "stream demo ended (server shutdown)" in err
    assert (tmp_path / "live/demo/720p/index.m3u8").read_text().rstrip().endswith("#EXT-X-ENDLIST")
