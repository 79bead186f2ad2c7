"""Storage proofs (Merkle sum tree over the chunk inventory): every honest answer verifies,
every altered one fails, and the byte-offset sampling hits a chunk in proportion to its size."""

from __future__ import annotations

import copy
import hashlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.rewards import storage_verified
from meshcast.storage_proofs import (
    EMPTY_ROOT,
    Commitment,
    Inventory,
    ProofInvalid,
    new_challenge,
    verify_proof,
)


def chunks(sizes: list[int]) -> dict[str, bytes]:
    out = {}
    for i, n in enumerate(sizes):
        data = (i.to_bytes(4, "big") * (n // 4 + 1))[:n]
        out[hashlib.sha256(data).hexdigest()] = data
    return out


def inventory(blobs: dict[str, bytes]) -> Inventory:
    return Inventory({d: len(b) for d, b in blobs.items()})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.data())
def test_every_offset_proves_the_chunk_that_covers_it(sizes: list[int], data: Any) -> None:
    blobs = chunks(sizes)
    inv = inventory(blobs)
    total = inv.commitment.bytes
    assert total == sum(len(b) for b in blobs.values())
    for offset in {0, total - 1, data.draw(st.integers(0, total - 1))}:
        proof = inv.prove(offset)
        digest = verify_proof(inv.commitment, offset, proof, blobs[proof["digest"]])
        # the leaf really is the one covering the offset in digest order
        start = 0
        for d, n in inv.leaves:
            if d == digest:
                assert start <= offset < start + n
            start += n


def test_altered_answers_fail() -> None:
    blobs = chunks([1000, 2000, 3000, 4000, 5000])
    inv = inventory(blobs)
    offset = 4500
    proof = inv.prove(offset)
    data = blobs[proof["digest"]]
    assert verify_proof(inv.commitment, offset, proof, data) == proof["digest"]

    with pytest.raises(ProofInvalid, match="hash"):
        verify_proof(inv.commitment, offset, proof, bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(ProofInvalid, match="bytes"):
        verify_proof(inv.commitment, offset, proof, data[:-1])
    # another chunk's (valid) proof does not cover this offset
    other = inv.prove(0)
    assert other["digest"] != proof["digest"]
    with pytest.raises(ProofInvalid, match="covers"):
        verify_proof(inv.commitment, offset, other, blobs[other["digest"]])
    # a path step changed, a size changed, a side flipped: not the committed root
    for mutate in (
        lambda p: p["path"][0].update(hash="0" * 64),
        lambda p: p["path"][0].update(bytes=p["path"][0]["bytes"] + 1),
        lambda p: p["path"][0].update(side="L" if p["path"][0]["side"] == "R" else "R"),
        lambda p: p.update(size=p["size"] + 1),
        lambda p: p["path"].pop(),
    ):
        bad = copy.deepcopy(proof)
        mutate(bad)
        with pytest.raises(ProofInvalid):
            verify_proof(inv.commitment, offset, bad, None)
    # a commitment claiming more bytes than the tree holds
    inflated = Commitment(inv.commitment.root, 5, inv.commitment.bytes + 1)
    with pytest.raises(ProofInvalid, match="root"):
        verify_proof(inflated, offset, proof, data)
    with pytest.raises(ProofInvalid):
        inv.prove(inv.commitment.bytes)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=70),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    )
)
def test_garbage_proofs_are_rejected_not_crashing(garbage: Any) -> None:
    inv = inventory(chunks([10, 20, 30]))
    with pytest.raises(ProofInvalid):
        verify_proof(inv.commitment, 5, garbage, None)


def test_sampling_by_bytes_finds_a_dropped_share() -> None:
    """A node that lost 30% of its bytes fails about 30% of the challenges, however the
    bytes are split into chunks (one big invented chunk cannot hide)."""
    sizes = [100] * 70 + [3000]  # 7000 bytes in small chunks, 3000 in one
    blobs = chunks(sizes)
    inv = inventory(blobs)
    big = max(blobs, key=lambda d: len(blobs[d]))
    held = {d: b for d, b in blobs.items() if d != big}
    failed = 0
    trials = 2000
    for _ in range(trials):
        challenge = new_challenge(inv.commitment)
        proof = inv.prove(challenge["offset"])
        if proof["digest"] not in held:
            failed += 1
            continue
        verify_proof(inv.commitment, challenge["offset"], proof, held[proof["digest"]])
    assert 0.25 < failed / trials < 0.35


def test_empty_inventory_and_commitment_parsing() -> None:
    empty = Inventory({})
    assert empty.commitment == Commitment(EMPTY_ROOT, 0, 0)
    with pytest.raises(ProofInvalid):
        new_challenge(empty.commitment)
    raw = inventory(chunks([5, 6])).commitment.to_json()
    assert Commitment.from_json(raw).to_json() == raw
    for bad in ({**raw, "bytes": -1}, {**raw, "root": "zz"}, {**raw, "chunks": 0}, [], None):
        with pytest.raises(ValueError):
            Commitment.from_json(bad)


def test_storage_verified_rule() -> None:
    assert storage_verified(1000, 1000, 10, 10, 0.05) == 1000
    assert storage_verified(1000, 1000, 7, 10, 0.05) == 700
    assert storage_verified(1000, 1000, 0, 0, 0.05) == 0  # never challenged
    assert storage_verified(2000, 1000, 10, 10, 0.05) == 1000  # bounded by the commitment
    assert storage_verified(1040, 1000, 10, 10, 0.05) == 1040  # within tolerance


def test_large_inventory_builds_quickly_enough_for_a_receipt() -> None:
    leaves = {os.urandom(32).hex(): 4 << 20 for _ in range(20_000)}
    inv = Inventory(leaves)
    proof = inv.prove(inv.commitment.bytes // 2)
    assert len(proof["path"]) <= 15
    verify_proof(inv.commitment, inv.commitment.bytes // 2, proof)
