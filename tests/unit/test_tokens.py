"""Playback tokens: format, signature, time window, scope, rotation, parser fuzzing."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcast.tokens import (
    CLOCK_SKEW,
    Claims,
    TokenError,
    authorize,
    b64url_decode,
    b64url_encode,
    parse_key_set,
    parse_token,
    rewrite_hls,
    rewrite_mpd,
    sign,
    token_from_query,
    verify,
)
from origin.signing import Keyring

NOW = 1_800_000_000
PRIVATE = Ed25519PrivateKey.generate()
KEYS = {"k1": PRIVATE.public_key()}


def claims(scope: str = "live/show", exp: int = NOW + 600, nbf: int = NOW) -> Claims:
    return Claims(scope=scope, exp=exp, nbf=nbf, iat=nbf, sub="viewer-1")


def token(c: Claims | None = None, kid: str = "k1") -> str:
    return sign(PRIVATE, kid, c or claims())


def test_round_trip_and_format() -> None:
    t = token()
    version, kid, payload, sig = t.split(".")
    assert (version, kid) == ("v1", "k1")
    assert json.loads(b64url_decode(payload))["scope"] == "live/show"
    assert len(b64url_decode(sig)) == 64
    assert verify(t, KEYS, NOW) == claims()


def test_expiry_with_documented_skew() -> None:
    t = token(claims(exp=NOW))
    assert verify(t, KEYS, NOW + CLOCK_SKEW).exp == NOW
    with pytest.raises(TokenError) as exc:
        verify(t, KEYS, NOW + CLOCK_SKEW + 1)
    assert (exc.value.status, exc.value.reason) == (401, "expired")


def test_not_before_with_skew() -> None:
    t = token(claims(nbf=NOW + 100, exp=NOW + 700))
    with pytest.raises(TokenError, match="not valid yet"):
        verify(t, KEYS, NOW)
    assert verify(t, KEYS, NOW + 100 - CLOCK_SKEW).nbf == NOW + 100


def test_forged_tokens_refused() -> None:
    t = token()
    v, kid, _payload, sig = t.split(".")
    # Widen the scope in the payload, keep the signature: must not verify.
    forged_payload = b64url_encode(
        json.dumps({**claims().to_json(), "scope": "catalog/alice"}).encode()
    )
    with pytest.raises(TokenError) as exc:
        verify(f"{v}.{kid}.{forged_payload}.{sig}", KEYS, NOW)
    assert exc.value.reason == "bad_signature"
    other = sign(Ed25519PrivateKey.generate(), "k1", claims())
    with pytest.raises(TokenError, match="signature"):
        verify(other, KEYS, NOW)
    with pytest.raises(TokenError) as unknown:
        verify(token(kid="nope"), KEYS, NOW)
    assert unknown.value.reason == "unknown_key"


def test_scope_checks() -> None:
    t = token(claims("live/show"))
    assert authorize(t, "live", "show", "alice", KEYS, NOW).scope == "live/show"
    for kind, name in (("live", "other"), ("vod", "show")):
        with pytest.raises(TokenError) as exc:
            authorize(t, kind, name, "alice", KEYS, NOW)
        assert (exc.value.status, exc.value.reason) == (403, "wrong_scope")
    catalog = token(claims("catalog/alice"))
    assert authorize(catalog, "vod", "film", "alice", KEYS, NOW).scope == "catalog/alice"
    with pytest.raises(TokenError):
        authorize(catalog, "vod", "film", "bob", KEYS, NOW)
    with pytest.raises(TokenError):
        authorize(catalog, "vod", "film", None, KEYS, NOW)
    with pytest.raises(TokenError) as missing:
        authorize(None, "live", "show", "alice", KEYS, NOW)
    assert missing.value.reason == "token_required"


def test_keyring_rotation_keeps_old_tokens_valid(tmp_path: Path) -> None:
    ring = Keyring(tmp_path)
    old = ring.mint(claims())
    old_kid = ring.current.kid
    new_kid = ring.rotate()
    assert new_kid != old_kid
    new = ring.mint(claims())
    assert parse_token(new).kid == new_kid
    published = parse_key_set(ring.key_set())
    assert verify(old, published, NOW) and verify(new, published, NOW)
    # A restarted origin reloads the same keys (and the file is private).
    again = Keyring(tmp_path)
    assert set(again.public_keys()) == {old_kid, new_kid}
    assert (tmp_path / "token_keys.json").stat().st_mode & 0o077 == 0
    again.retire(keep=1)
    with pytest.raises(TokenError, match="unknown signing key"):
        verify(old, parse_key_set(again.key_set()), NOW)


def test_query_parser() -> None:
    assert token_from_query("token=abc") == "abc"
    assert token_from_query("a=1&token=v1.k.p.s&token=second") == "v1.k.p.s"
    assert token_from_query("tokens=x") is None
    assert token_from_query("") is None
    assert token_from_query("token=") is None
    assert token_from_query("token=" + "a" * 5000) is None


def test_hls_rewrite_carries_token_and_drops_old_queries() -> None:
    playlist = (
        '#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MAP:URI="init.mp4?token=OLD"\n'
        "#EXTINF:2.0,\n0.m4s\n#EXTINF:2.0,\n1.m4s?token=OLD\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",URI="audio/index.m3u8"\n360p/index.m3u8\n'
    )
    out = rewrite_hls(playlist, "NEW")
    assert "OLD" not in out
    assert 'URI="init.mp4?token=NEW"' in out
    assert 'URI="audio/index.m3u8?token=NEW"' in out
    uris = [line for line in out.splitlines() if line and not line.startswith("#")]
    assert uris == ["0.m4s?token=NEW", "1.m4s?token=NEW", "360p/index.m3u8?token=NEW"]


def test_mpd_rewrite() -> None:
    mpd = '<SegmentTemplate initialization="$RepresentationID$/init.mp4" media="$Number$.m4s"/>'
    out = rewrite_mpd(mpd, "T")
    assert 'initialization="$RepresentationID$/init.mp4?token=T"' in out
    assert 'media="$Number$.m4s?token=T"' in out


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_parse_token_only_raises_token_error(raw: str) -> None:
    try:
        parsed = parse_token(raw)
    except TokenError as exc:
        assert exc.status == 401 and exc.reason == "malformed"
    else:
        assert parsed.claims.scope.split("/")[0] in ("live", "vod", "catalog")


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_token_never_verifies(data: st.DataObject) -> None:
    good = token()
    chars = list(good)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(chars) - 1))
        chars[pos] = data.draw(st.sampled_from('AQgw_-.=+/0v1k{}"x'))
    mutated = "".join(chars)
    try:
        result = verify(mutated, KEYS, NOW)
    except TokenError:
        return
    # base64url has a few bits of slack in its last character: same bytes, same claims.
    assert result == claims()


def reference_token(query: str) -> str | None:
    """The obvious implementation, which token_from_query must match."""
    first32 = "&".join(query.split("&")[:32])
    for key, value in parse_qsl(first32, keep_blank_values=True):
        if key == "token":
            return value if 0 < len(value) <= 1024 else None
    return None


_QUERY_PIECES = st.sampled_from(
    ["token", "=", "&", "%", "%2", "%3D", "%74oken", "+", "a", "é", ";"]
)


@settings(max_examples=1000)
@given(st.one_of(st.text(max_size=400), st.lists(_QUERY_PIECES, max_size=40).map("".join)))
def test_fuzz_query_parser_matches_parse_qsl(query: str) -> None:
    result = token_from_query(query)
    assert result is None or 0 < len(result) <= 1024
    assert result == reference_token(query)


async def test_edge_policy_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from prometheus_client import CollectorRegistry

    from edge import access

    monkeypatch.setattr(access, "POLICY_CACHE_MAX", 3)
    async with httpx.AsyncClient() as client:
        control = access.AccessControl(lambda: "http://127.0.0.1:9", client, CollectorRegistry())
        for name in ("a", "b", "c", "d", "b", "e"):
            control._remember("live", name, "public", None)
    assert list(control.policies) == [("live", "d"), ("live", "b"), ("live", "e")]
