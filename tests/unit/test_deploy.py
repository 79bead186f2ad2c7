"""compose.yaml and the Dockerfile, validated without a Docker engine: structure, health
checks, volumes, and every meshcast command line parsed by our own CLI parser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcast.cli import _parser

ROOT = Path(__file__).resolve().parents[2]


def interpolate(value: str) -> str:
    # Compose's ${VAR:-default}: the default, as on a machine without the variable.
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_services_health_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"nats", "origin", "transcoder", "edge1", "edge2"}
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check["test"][0] == "CMD", f"{name}: healthcheck"
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services and cond["condition"] == "service_healthy", name
    assert "-js" in services["nats"]["command"]  # JetStream for durable events


def test_meshcast_commands_parse_and_point_at_each_other(compose: dict[str, Any]) -> None:
    services = compose["services"]
    parser = _parser()
    parsed = {}
    for name, service in services.items():
        if service.get("image") != "meshcast:latest":
            continue
        assert service["build"] == "." and (ROOT / "Dockerfile").exists()
        argv = [interpolate(arg) for arg in service["command"]]
        parsed[name] = args = parser.parse_args(argv)  # exits on an unknown flag
        assert args.bus == "nats://nats:4222", name
        assert args.host == "0.0.0.0", name
    assert {parsed[n].command for n in parsed} == {"origin", "transcoder", "edge"}
    origin_port = parsed["origin"].http_port
    edge_ports = set()
    for name in ("edge1", "edge2"):
        edge = parsed[name]
        assert edge.origin == f"http://origin:{origin_port}"
        assert edge.advertise == f"http://{name}:{edge.port}"
        assert f"{edge.port}:{edge.port}" in services[name]["ports"]
        edge_ports.add(edge.port)
    assert len(edge_ports) == 2
    assert parsed["transcoder"].advertise == f"tcp://transcoder:{parsed['transcoder'].port}"
    assert parsed["transcoder"].secret == parsed["origin"].transcoder_secret != ""
    # Origin and transcoder share the segment store.
    assert services["origin"]["volumes"][0].split(":")[0] == "media"
    assert services["transcoder"]["volumes"][0] == services["origin"]["volumes"][0]


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in declared, volume


def test_dockerfile_is_multi_stage_non_root_and_healthchecked() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", text, re.M | re.I)
    assert len(stages) >= 3 and "runtime" in stages
    runtime = text[text.index("AS runtime") :]
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in runtime and "ENTRYPOINT" in runtime
    assert "pip install -e" not in text
    # Every COPY source exists (node_modules comes from the player stage).
    for source in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(\S+)", text, re.M):
        assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "**/node_modules", "data"} <= set(ignored)
