"""Storage proofs by random chunk challenges (sans-IO: the edge builds and answers, the
coordinator challenges and checks).

A storing node commits, in each signed receipt, to its inventory: the chunks it holds,
as the root of a *Merkle sum tree* over ``(sha256, size)`` leaves sorted by digest. Every
inner node hashes its children together with their byte totals, so the root also fixes
the total size. A challenge names a committed root and a random **byte offset** in
``[0, total)``; the node answers with the leaf that covers that offset, its path to the
root and the chunk's bytes. The coordinator needs no copy of the data: chunks are named
by their SHA-256, so the bytes check themselves, and the path checks that the leaf really
covers the offset in the committed tree. Sampling by bytes, not by leaf, means a node
that invents one huge chunk, or drops a share ``p`` of its bytes, fails each challenge
with probability ``p``.

What this does not prove: that the chunks are useful (a node could store junk of its own
making) or that they are held locally rather than fetched from a replica when
challenged (the deadline only makes that costly). Both are documented limits.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Final

MAX_DEPTH: Final = 48
# The node's answer to a challenge: the chunk as the body, its Merkle path in this header.
PROOF_HEADER: Final = "X-Meshcast-Proof"
_HEX: Final = frozenset("0123456789abcdef")


class ProofInvalid(Exception):
    pass


def _hash_leaf(digest: str, size: int) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(digest) + size.to_bytes(8, "big")).digest()


def _hash_inner(left: tuple[bytes, int], right: tuple[bytes, int]) -> bytes:
    return hashlib.sha256(
        b"\x01" + left[0] + left[1].to_bytes(8, "big") + right[0] + right[1].to_bytes(8, "big")
    ).digest()


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and not set(value) - _HEX


@dataclass(frozen=True, slots=True)
class Commitment:
    """What a receipt says about a node's storage: ``chunks`` leaves, ``bytes`` in all."""

    root: str
    chunks: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "chunks": self.chunks, "bytes": self.bytes}

    @classmethod
    def from_json(cls, raw: Any) -> Commitment:
        if not isinstance(raw, dict) or not _is_digest(raw.get("root")):
            raise ValueError("storage commitment needs a sha256 hex root")
        chunks, size = raw.get("chunks"), raw.get("bytes")
        if type(chunks) is not int or type(size) is not int or chunks < 0 or size < 0:
            raise ValueError("storage commitment chunks/bytes must be non-negative integers")
        if (chunks == 0) != (size == 0):
            raise ValueError("storage commitment: bytes without chunks or chunks without bytes")
        return cls(raw["root"], chunks, size)


EMPTY_ROOT: Final = hashlib.sha256(b"\x02empty").hexdigest()


class Inventory:
    """A snapshot of the chunks a node holds, with the tree to answer challenges."""

    def __init__(self, leaves: dict[str, int]) -> None:
        self.held = leaves
        self.leaves = sorted((d, n) for d, n in leaves.items() if n > 0)
        # levels[0] = leaves, levels[-1] = [root]; each entry (hash, total bytes).
        level = [(_hash_leaf(d, n), n) for d, n in self.leaves]
        self.levels: list[list[tuple[bytes, int]]] = [level]
        while len(level) > 1:
            nxt = []
            for i in range(0, len(level) - 1, 2):
                a, b = level[i], level[i + 1]
                nxt.append((_hash_inner(a, b), a[1] + b[1]))
            if len(level) % 2:
                nxt.append(level[-1])  # a lone node moves up unchanged
            level = nxt
            self.levels.append(level)
        total = sum(n for _, n in self.leaves)
        root = self.levels[-1][0][0].hex() if self.leaves else EMPTY_ROOT
        self.commitment = Commitment(root, len(self.leaves), total)

    def prove(self, offset: int) -> dict[str, Any]:
        """The leaf covering byte ``offset`` and its path (siblings from the bottom)."""
        if not 0 <= offset < self.commitment.bytes:
            raise ProofInvalid(f"offset {offset} outside [0, {self.commitment.bytes})")
        # Descend from the root by the byte totals.
        index = 0
        for depth in range(len(self.levels) - 1, 0, -1):
            below = self.levels[depth - 1]
            left = 2 * index
            if left + 1 >= len(below):  # promoted lone node
                index = left
                continue
            if offset < below[left][1]:
                index = left
            else:
                offset -= below[left][1]
                index = left + 1
        path = []
        i = index
        for level in self.levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append({"side": "L" if sibling < i else "R", "hash": level[sibling][0].hex(),
                             "bytes": level[sibling][1]})  # fmt: skip
            i //= 2
        digest, size = self.leaves[index]
        return {"digest": digest, "size": size, "path": path}


def new_challenge(commitment: Commitment) -> dict[str, Any]:
    """A random offset in the committed bytes (unpredictable: secrets, not random)."""
    if commitment.bytes <= 0:
        raise ProofInvalid("nothing committed to challenge")
    return {"root": commitment.root, "offset": secrets.randbelow(commitment.bytes)}


def verify_proof(commitment: Commitment, offset: int, proof: Any, data: bytes | None = None) -> str:
    """Check an answer to the challenge ``offset`` against ``commitment``; returns the
    chunk digest. With ``data``, also that the bytes are the chunk. ProofInvalid says why."""
    if not isinstance(proof, dict) or not _is_digest(proof.get("digest")):
        raise ProofInvalid("proof needs the chunk digest")
    size, path = proof.get("size"), proof.get("path")
    if type(size) is not int or size <= 0:
        raise ProofInvalid("proof size must be a positive integer")
    if not isinstance(path, list) or len(path) > MAX_DEPTH:
        raise ProofInvalid("proof path must be a list")
    node = (_hash_leaf(proof["digest"], size), size)
    start = 0  # bytes to the left of the leaf
    for step in path:
        if not isinstance(step, dict) or step.get("side") not in ("L", "R"):
            raise ProofInvalid("path step needs side L or R")
        h, n = step.get("hash"), step.get("bytes")
        if not isinstance(h, str) or not _is_digest(h) or type(n) is not int or n <= 0:
            raise ProofInvalid("path step needs a hash and a positive byte total")
        sibling = (bytes.fromhex(h), n)
        if step["side"] == "L":
            node = (_hash_inner(sibling, node), n + node[1])
            start += n
        else:
            node = (_hash_inner(node, sibling), node[1] + n)
    if node[0].hex() != commitment.root or node[1] != commitment.bytes:
        raise ProofInvalid("path does not lead to the committed root")
    if not start <= offset < start + size:
        raise ProofInvalid(f"leaf covers [{start}, {start + size}), not offset {offset}")
    if data is not None:
        if len(data) != size:
            raise ProofInvalid(f"chunk is {len(data)} bytes, committed {size}")
        if hashlib.sha256(data).hexdigest() != proof["digest"]:
            raise ProofInvalid("chunk bytes do not hash to the committed digest")
    return str(proof["digest"])
