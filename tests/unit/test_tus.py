from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcast.tus import (
    TusError,
    check_resumable,
    encode_metadata,
    filename_from_metadata,
    parse_metadata,
    parse_non_negative,
)


def test_lengths_and_offsets() -> None:
    assert parse_non_negative("Upload-Length", "0") == 0
    assert parse_non_negative("Upload-Offset", " 1048576 ") == 1048576
    for bad in (None, "", "-1", "+5", "1e3", "0x10", "1 2", "١٢", "99999999999999999999"):
        with pytest.raises(TusError) as info:
            parse_non_negative("Upload-Length", bad)
        assert info.value.status == 400


def test_resumable_version() -> None:
    check_resumable("1.0.0")
    for bad in (None, "0.2.2", "1.0"):
        with pytest.raises(TusError) as info:
            check_resumable(bad)
        assert info.value.status == 412


def test_metadata_examples() -> None:
    # The spec's own example.
    parsed = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
    assert parsed == {"filename": b"world_domination_plan.pdf", "is_confidential": None}
    assert parse_metadata(None) == {} == parse_metadata("  ")
    for bad in ("a !!!", "a YQ==,a YQ==", "a b c", ",", "a YQ==,"):
        with pytest.raises(TusError):
            parse_metadata(bad)
    assert filename_from_metadata({"filename": b"../../etc/passwd"}) == ".._.._etc_passwd"


keys = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","), min_size=1
)


@given(st.dictionaries(keys, st.none() | st.binary(max_size=64), max_size=6))
def test_metadata_round_trip(metadata: dict[str, bytes | None]) -> None:
    # An empty value has no base64 form: it travels as a bare key, like a flag.
    expected = {k: v or None for k, v in metadata.items()}
    assert parse_metadata(encode_metadata(metadata)) == expected


@given(st.text(max_size=200))
def test_fuzz_metadata_parser(header: str) -> None:
    try:
        parse_metadata(header)
    except TusError as exc:
        assert exc.status == 400


@given(st.text(max_size=30))
def test_fuzz_integer_headers(header: str) -> None:
    try:
        assert parse_non_negative("Upload-Offset", header) >= 0
    except TusError as exc:
        assert exc.status == 400
