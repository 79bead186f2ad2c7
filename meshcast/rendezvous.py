"""Rendezvous (highest random weight) hashing: every node scores (node, key) and the highest
score owns the key; when a node goes away only its keys move, spread over the survivors.

Shared by the edge's peer ring (who caches an object) and the coordinator's inference
scheduler (which node already holds a job's input), so both agree on the owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def rendezvous_score(node: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest())


def rendezvous_owner(key: str, nodes: Iterable[str]) -> str | None:
    best, best_score = None, -1
    for node in nodes:
        score = rendezvous_score(node, key)
        if score > best_score:
            best, best_score = node, score
    return best


def rendezvous_owners(key: str, nodes: Iterable[str], k: int) -> list[str]:
    """The ``k`` highest-scoring nodes for ``key``, best first (replica placement)."""
    return sorted(nodes, key=lambda node: rendezvous_score(node, key), reverse=True)[:k]
