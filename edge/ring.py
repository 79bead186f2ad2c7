"""Peer ring: which edge owns an object (rendezvous hashing, ``meshcast/rendezvous.py``)
and which peers are alive. When a node dies only its keys move, spread over the survivors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import httpx

from meshcast.rendezvous import rendezvous_owner, rendezvous_owners

__all__ = ["PeerRing", "rendezvous_owner", "rendezvous_owners"]

log = logging.getLogger(__name__)


class PeerRing:
    def __init__(self, self_url: str, peers: Iterable[str], *, down_for: float = 5.0) -> None:
        self.self_url = self_url.rstrip("/")
        self.peers = sorted({p.rstrip("/") for p in peers} - {self.self_url})
        self._static = frozenset(self.peers)  # configured with --peer: never forgotten
        self.down_for = down_for
        self._down_until: dict[str, float] = {}
        self._heard: dict[str, float] = {}  # peers learned from the bus: last heartbeat

    # ---- membership from the event bus -------------------------------------------------

    def heard(self, peer: str) -> None:
        """A heartbeat from ``peer``: it joins the ring (or stays in it)."""
        peer = peer.rstrip("/")
        if peer == self.self_url:
            return
        self._heard[peer] = time.monotonic()
        if peer not in self.peers:
            self.peers = sorted({*self.peers, peer})
            log.info("edge %s: peer %s joined the ring", self.self_url, peer)
        self.mark_up(peer)

    def left(self, peer: str, reason: str) -> None:
        peer = peer.rstrip("/")
        self._heard.pop(peer, None)
        if peer in self.peers and peer not in self._static:
            self.peers = [p for p in self.peers if p != peer]
            self._down_until.pop(peer, None)
            log.info("edge %s: peer %s left the ring (%s)", self.self_url, peer, reason)

    def expire(self, silent_for: float) -> None:
        """Forget bus-learned peers without a heartbeat for ``silent_for`` seconds."""
        cutoff = time.monotonic() - silent_for
        for peer, at in list(self._heard.items()):
            if at < cutoff:
                self.left(peer, f"no heartbeat for {silent_for:.0f} s")

    def alive_peers(self) -> list[str]:
        now = time.monotonic()
        return [p for p in self.peers if self._down_until.get(p, 0.0) <= now]

    def owner(self, key: str) -> str:
        """The live node that owns ``key``; may be this edge itself."""
        owner = rendezvous_owner(key, [self.self_url, *self.alive_peers()])
        assert owner is not None
        return owner

    def owners(self, key: str, k: int) -> list[str]:
        """The ``k`` live nodes (this edge included) that hold replicas of ``key``."""
        return rendezvous_owners(key, [self.self_url, *self.alive_peers()], k)

    def mark_down(self, peer: str, reason: str) -> None:
        if self._down_until.get(peer, 0.0) <= time.monotonic():
            log.warning("edge %s: peer %s down (%s)", self.self_url, peer, reason)
        self._down_until[peer] = time.monotonic() + self.down_for

    def mark_up(self, peer: str) -> None:
        if self._down_until.pop(peer, None) is not None:
            log.info("edge %s: peer %s is back", self.self_url, peer)

    async def health_loop(self, client: httpx.AsyncClient, interval: float = 2.0) -> None:
        """Probe peers so the ring rebalances without waiting for a failed request."""
        while True:
            await asyncio.sleep(interval)  # peers started with us may still be binding
            for peer in list(self.peers):
                try:
                    ok = (await client.get(f"{peer}/healthz", timeout=0.5)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.mark_up(peer)
                else:
                    self.mark_down(peer, "health check failed")
