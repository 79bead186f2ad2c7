"""Sans-IO pieces of the storage plugin: aws-chunked decoding, ListObjects pagination,
plugin discovery, S3 keys in the key store and the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.app import Edge
from edge.plugins import BUILTIN, ENTRY_POINT_GROUP, UnknownPlugin, find_plugin
from edge.plugins.storage import StoragePlugin, chunked
from edge.plugins.storage.s3xml import (
    ListParams,
    S3Error,
    decode_token,
    encode_token,
    list_page,
    parse_list_params,
)
from meshcast import cli, sigv4
from meshcast.config import EdgeConfig
from meshcast.keys import KeyRejected, KeyStore

ROOT = Path(__file__).resolve().parents[2]

# ---- aws-chunked -----------------------------------------------------------------------


def decode_all(data: bytes, step: int | None = None) -> tuple[bytes, dict[str, str]]:
    decoder = chunked.AwsChunkedDecoder()
    out = bytearray()
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        for part in decoder.feed(piece):
            out += part
    decoder.finish()
    return bytes(out), decoder.trailers


@given(st.binary(max_size=3000), st.integers(1, 700), st.integers(1, 50))
def test_chunked_roundtrip_whole_and_split(payload: bytes, chunk: int, step: int) -> None:
    body = chunked.encode(payload, chunk, {"x-amz-checksum-crc32": "AAAAAA=="})
    assert decode_all(body) == (payload, {"x-amz-checksum-crc32": "AAAAAA=="})
    assert decode_all(body, step)[0] == payload
    assert decode_all(body, 1)[0] == payload
    with pytest.raises(chunked.ChunkedError):
        decode_all(body + b"trailing")
    with pytest.raises(chunked.ChunkedError):
        decode_all(body[:-1])


@given(st.binary(max_size=400))
def test_chunked_garbage_never_crashes(data: bytes) -> None:
    with contextlib.suppress(chunked.ChunkedError):
        decode_all(data)


def test_signed_chunks_are_verified() -> None:
    credential = sigv4.Credential("AK", "20260101", "us-east-1", "s3")
    key = sigv4.signing_key("secret", credential)
    date = "20260101T000000Z"

    def signer(previous: str, digest: str) -> str:
        return sigv4.sign(key, sigv4.chunk_string_to_sign(date, credential, previous, digest))

    seed = "a" * 64
    body, previous = bytearray(), seed
    for piece in (b"hello ", b"world", b""):
        signature = signer(previous, hashlib.sha256(piece).hexdigest())
        body += f"{len(piece):x};chunk-signature={signature}\r\n".encode() + piece
        body += b"\r\n" if piece else b""
        previous = signature
    body += b"\r\n"
    decoder = chunked.AwsChunkedDecoder(signer, seed)
    assert b"".join(decoder.feed(bytes(body))) == b"hello world" and decoder.done
    tampered = bytes(body).replace(b"world", b"w0rld")
    with pytest.raises(chunked.ChunkedError, match="signature"):
        chunked.AwsChunkedDecoder(signer, seed).feed(tampered)


# ---- ListObjects -----------------------------------------------------------------------

keys_strategy = st.lists(
    st.text(alphabet="ab/c.", min_size=1, max_size=6), unique=True, max_size=30
).map(sorted)


@given(keys_strategy, st.sampled_from(["", "a", "a/", "b"]), st.sampled_from(["", "/", "."]))
def test_pagination_covers_the_full_listing_once(
    keys: list[str], prefix: str, delimiter: str
) -> None:
    full = list_page(keys, ListParams(prefix=prefix, delimiter=delimiter, max_keys=10_000))
    assert not full.truncated
    for size in (1, 2, 3):
        seen_keys: list[str] = []
        seen_prefixes: list[str] = []
        after = ""
        for _ in range(len(keys) + 2):
            page = list_page(
                keys, ListParams(prefix=prefix, delimiter=delimiter, max_keys=size, after=after)
            )
            assert len(page.keys) + len(page.prefixes) <= size
            seen_keys += page.keys
            seen_prefixes += page.prefixes
            if not page.truncated:
                break
            after = decode_token(encode_token(page.last))
        assert seen_keys == full.keys and seen_prefixes == full.prefixes
    for key in keys:
        if key.startswith(prefix):
            rolled = delimiter and delimiter in key[len(prefix) :]
            assert (key in full.keys) != bool(rolled)


@given(
    st.dictionaries(
        st.sampled_from(["max-keys", "list-type", "continuation-token", "encoding-type", "prefix"]),
        st.text(max_size=12),
    )
)
def test_list_params_reject_cleanly(query: dict[str, str]) -> None:
    try:
        params = parse_list_params(query)
    except S3Error as exc:
        assert exc.status == 400
    else:
        assert 0 <= params.max_keys <= 1000


# ---- plugins ---------------------------------------------------------------------------


def test_pyproject_declares_the_builtin_plugins_as_entry_points() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][ENTRY_POINT_GROUP]
    assert declared == BUILTIN
    assert find_plugin("storage") is StoragePlugin


def test_unknown_plugin_fails_at_startup(tmp_path: Path) -> None:
    with pytest.raises(UnknownPlugin, match=r"'nope'.*known: .*storage"):
        Edge(EdgeConfig(origin="http://127.0.0.1:9", cache_dir=tmp_path, plugins=("nope",)))


def test_cli_rejects_unknown_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["edge", "--origin", "http://127.0.0.1:9", "--port", "0", "--plugin", "nope"]
    assert cli.main([*argv, "--cache-dir", str(tmp_path)]) == 1
    assert "unknown edge plugin 'nope'" in capsys.readouterr().err


# ---- S3 keys ---------------------------------------------------------------------------


def test_cli_creates_s3_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "create", "bucketeer", "--kind", "s3", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    access_key, secret = out.split()
    assert len(access_key) == 20 and access_key.isupper() and len(secret) == 40
    store = KeyStore(tmp_path)
    assert store.s3_secret(access_key) == ("bucketeer", secret)
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert cli.main(["keys", "list", "--data", str(tmp_path)]) == 0
    assert "bucketeer\ts3\tactive" in capsys.readouterr().out
    assert cli.main(["keys", "revoke", "bucketeer", "--data", str(tmp_path)]) == 0
    with pytest.raises(KeyRejected, match="revoked"):
        store.s3_secret(access_key)
    # An S3 key is not a stream key, and stream keys still work as before.
    stream_key = store.create("live1")
    assert store.verify(stream_key) == "live1"
    with pytest.raises(KeyRejected):
        store.verify(f"stream_{access_key}_{secret}")
