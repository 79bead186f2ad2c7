"""Canonical JSON, Ed25519 signatures, node ids and receipt chains (sans-IO)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.receipts import (
    ChainHead,
    ReceiptBuilder,
    ReceiptRejected,
    Usage,
    check_next,
    parse_receipt,
    receipt_hash,
    verify_chain,
)
from meshcast.signing import (
    ZERO_HASH,
    KeyFileExists,
    NodeKey,
    SignatureError,
    canonical_json,
    node_id_for,
    verify,
    verify_object,
)

KEY = NodeKey.generate()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"], "c": {"z": None, "y": True}}) == (
        '{"a":[1,"é"],"b":1,"c":{"y":true,"z":null}}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@given(json_values)
def test_canonical_json_round_trips_and_is_order_independent(value: Any) -> None:
    encoded = canonical_json(value)
    assert canonical_json(json.loads(encoded)) == encoded
    if isinstance(value, dict):
        reversed_dict = dict(reversed(list(value.items())))
        assert canonical_json(reversed_dict) == encoded


@settings(max_examples=50)
@given(st.binary(min_size=1, max_size=256), st.data())
def test_sign_verify_round_trip_and_any_bit_flip_fails(message: bytes, data: st.DataObject) -> None:
    sig = KEY.sign(message)
    verify(KEY.public_key, message, sig)
    bit = data.draw(st.integers(0, len(message) * 8 - 1))
    flipped = bytearray(message)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError):
        verify(KEY.public_key, bytes(flipped), sig)
    raw = bytearray(base64.b64decode(sig))
    sbit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[sbit // 8] ^= 1 << (sbit % 8)
    with pytest.raises(SignatureError):
        verify(KEY.public_key, message, base64.b64encode(bytes(raw)).decode())


@given(json_values)
def test_signed_objects_verify_only_under_their_key(value: Any) -> None:
    sig = KEY.sign_object(value)
    verify_object(KEY.public_key, value, sig)
    with pytest.raises(SignatureError):
        verify_object(NodeKey.generate().public_key, value, sig)


def test_malformed_keys_and_signatures_are_signature_errors() -> None:
    for key, sig in (("!!", KEY.sign(b"x")), (KEY.public_key, "AAAA"), (KEY.public_key, "%%")):
        with pytest.raises(SignatureError):
            verify(key, b"x", sig)


def test_node_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key = NodeKey.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert NodeKey.load(path).node_id == key.node_id == node_id_for(key.public_key)
    assert key.node_id.startswith("node_") and len(key.node_id) == 5 + 32
    with pytest.raises(KeyFileExists):
        NodeKey.create(path)
    assert NodeKey.load(path).public_key == key.public_key
    assert NodeKey.create(path, force=True).node_id != key.node_id
    assert not list(tmp_path.glob(".node-key.*"))


def _chain(n: int) -> tuple[ReceiptBuilder, list[dict[str, Any]]]:
    builder = ReceiptBuilder(KEY)
    usage = Usage()
    out = []
    for i in range(n):
        usage.served["live/a"] = usage.served.get("live/a", 0) + 1000 * (i + 1)
        usage.peer_served.setdefault("live/a", {})["http://p"] = 10 * (i + 1)
        out.append(builder.build(usage, 1000.0 + 10 * (i + 1), period_start=1000.0))
    return builder, out


def test_builder_chains_deltas_and_signs() -> None:
    builder, envelopes = _chain(3)
    bodies = [e["body"] for e in envelopes]
    assert [b["seq"] for b in bodies] == [1, 2, 3]
    assert bodies[0]["prev"] == ZERO_HASH
    assert bodies[1]["prev"] == receipt_hash(bodies[0])
    assert [b["served"]["live/a"] for b in bodies] == [1000, 2000, 3000]
    assert bodies[2]["peer_served"] == {"live/a": {"http://p": 10}}  # deltas of 10, 20, 30
    assert bodies[1]["period_start"] == bodies[0]["period_end"]
    for e in envelopes:
        verify_object(KEY.public_key, e["body"], e["sig"])
    head = verify_chain(bodies)
    assert head == builder.head


def test_chain_rejects_replay_gap_fork_overlap_and_future() -> None:
    _, envelopes = _chain(3)
    r1, r2, r3 = (parse_receipt(e["body"]) for e in envelopes)
    head = ChainHead(r1.seq, r1.hash, r1.period_end)
    check_next(head, r2, now=2000, max_skew=5)
    cases = [
        (r1, "replay"),
        (r3, "gap"),
    ]
    for receipt, reason in cases:
        with pytest.raises(ReceiptRejected, match=reason) as exc:
            check_next(head, receipt, now=2000, max_skew=5)
        assert exc.value.code == 409
    forked = dict(envelopes[1]["body"], prev="1" * 64)
    with pytest.raises(ReceiptRejected, match="fork"):
        check_next(head, parse_receipt(forked), now=2000, max_skew=5)
    with pytest.raises(ReceiptRejected, match="future"):
        check_next(head, r2, now=r2.period_end - 10, max_skew=5)
    overlap = dict(envelopes[1]["body"], period_start=r1.period_end - 5)
    with pytest.raises(ReceiptRejected, match="overlaps"):
        check_next(head, parse_receipt(overlap), now=2000, max_skew=5)
    with pytest.raises(ReceiptRejected, match="chain broken"):
        verify_chain([envelopes[0]["body"], envelopes[2]["body"]])


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"v": 2}, "version"),
        ({"seq": 0}, "seq"),
        ({"seq": True}, "seq"),
        ({"prev": "xyz"}, "prev"),
        ({"served": {"live/a": -1}}, "non-negative"),
        ({"served": {"live/a": 1.5}}, "non-negative"),
        ({"served": []}, "served"),
        ({"period_end": 1}, "before"),
        ({"ts": "now"}, "ts"),
        ({"node": "bob"}, "node"),
    ],
)
def test_malformed_receipts_are_refused_with_a_reason(patch: dict[str, Any], reason: str) -> None:
    _, envelopes = _chain(1)
    with pytest.raises(ReceiptRejected, match=reason) as exc:
        parse_receipt(dict(envelopes[0]["body"], **patch))
    assert exc.value.code == 400
