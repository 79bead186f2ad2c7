"""Per-stream byte counts of one edge: the numbers its usage receipts claim.

Counted at the same points as ``meshcast_edge_served_bytes_total`` (the fast-path HIT, the
Starlette responses, streamed fills), so the receipts and the edge's own metrics can be
compared byte for byte. Exported as ``meshcast_edge_stream_bytes_total{stream,to}``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from meshcast.receipts import Usage


def stream_of(path: str) -> str:
    """``/live/NAME/...`` -> ``live/NAME`` (paths here are already whitelisted)."""
    parts = path.split("/", 3)
    return f"{parts[1]}/{parts[2]}" if len(parts) > 3 else "-"


class UsageMeter(Collector):
    def __init__(self) -> None:
        self.usage = Usage()

    def served(self, path: str, size: int, peer: str | None) -> None:
        if size <= 0:
            return
        stream = stream_of(path)
        if peer is None:
            served = self.usage.served
            served[stream] = served.get(stream, 0) + size
        else:
            by_peer = self.usage.peer_served.setdefault(stream, {})
            by_peer[peer] = by_peer.get(peer, 0) + size

    def fetched(self, path: str, size: int) -> None:
        stream = stream_of(path)
        self.usage.fetched[stream] = self.usage.fetched.get(stream, 0) + size

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "meshcast_edge_stream_bytes",
            "Body bytes sent per stream, to viewers or to peer edges",
            labels=["stream", "to"],
        )
        for stream, n in sorted(self.usage.served.items()):
            family.add_metric([stream, "viewer"], n)
        for stream, by_peer in sorted(self.usage.peer_served.items()):
            family.add_metric([stream, "peer"], sum(by_peer.values()))
        yield family
