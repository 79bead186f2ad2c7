"""The hardening limits that the CLI exposes reach the configuration (docs/hardening.md)."""

from __future__ import annotations

from meshcast import cli
from meshcast.config import HttpLimits, VodConfig


def test_origin_limit_flags() -> None:
    args = cli._parser().parse_args(
        ["origin", "--max-connections-per-ip", "32", "--vod-quota", "2G", "--vod-max-jobs", "3"]
    )
    config = cli._origin_config(args)
    assert config.http.max_per_address == 32
    assert config.http.max_connections == HttpLimits().max_connections
    assert (config.vod.max_owner_bytes, config.vod.max_owner_jobs) == (2 * 1024**3, 3)
    assert config.vod.probe == VodConfig().probe


def test_defaults_are_the_config_defaults() -> None:
    config = cli._origin_config(cli._parser().parse_args(["origin"]))
    assert config.http == HttpLimits()
    assert config.vod == VodConfig()
    edge = cli._parser().parse_args(["edge", "--origin", "http://o", "--port", "1"])
    assert (edge.s3_region, edge.max_connections_per_ip) == ("us-east-1", 512)
