"""Signed playback tokens: minted by the origin, verified offline by every edge.

Format: ``v1.<kid>.<payload>.<sig>`` where payload is base64url (no padding) of a JSON
object ``{"scope": ..., "exp": int, "nbf": int, "iat": int, "sub": str?}`` and sig is the
Ed25519 signature of the ASCII bytes ``v1.<kid>.<payload>``. Ed25519, not HMAC: edges hold
only public keys, so a compromised edge cannot mint tokens. ``kid`` names the signing key,
so the origin can rotate keys while tokens signed by the previous one stay valid.

Scopes: ``live/NAME``, ``vod/ASSET`` (one resource) or ``catalog/OWNER`` (every resource
of a creator; the edge learns owners from the access policy). Times are integer Unix
seconds; ``CLOCK_SKEW`` seconds of tolerance apply to ``exp`` and ``nbf`` both, because
origin and edge clocks differ.

Everything here is sans-IO: parsing and verification take strings and keys, never sockets,
so they are fuzzed directly (tests/unit/test_tokens.py, bench/fuzz.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_plus

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION: Final = "v1"
CLOCK_SKEW: Final = 30
MAX_TOKEN_LENGTH: Final = 1024
MAX_QUERY_FIELDS: Final = 32
TOKEN_PARAM: Final = "token"  # noqa: S105 (a parameter name, not a secret)
TOKEN_HEADER: Final = "x-meshcast-token"  # noqa: S105
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_SCOPE = re.compile(r"(?P<kind>live|vod|catalog)/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,63})")
_SUB_MAX = 128


class TokenError(Exception):
    """A token was refused; ``status`` is 401 (unusable credential) or 403 (valid, but not
    for this request), ``reason`` a short machine-readable word."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    scope: str
    exp: int
    nbf: int
    iat: int
    sub: str | None = None

    @property
    def scope_kind(self) -> str:
        return self.scope.split("/", 1)[0]

    @property
    def scope_name(self) -> str:
        return self.scope.split("/", 1)[1]

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "scope": self.scope,
            "exp": self.exp,
            "nbf": self.nbf,
            "iat": self.iat,
        }
        if self.sub is not None:
            body["sub"] = self.sub
        return body


@dataclass(frozen=True, slots=True)
class ParsedToken:
    kid: str
    claims: Claims
    signed: bytes  # the bytes the signature covers
    signature: bytes


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def valid_scope(scope: str) -> bool:
    return _SCOPE.fullmatch(scope) is not None and ".." not in scope


def _malformed(message: str) -> TokenError:
    return TokenError(401, "malformed", f"malformed token: {message}")


def _int_claim(body: dict[str, object], name: str) -> int:
    value = body.get(name)
    # bool is an int subclass: refuse it explicitly.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**40:
        raise _malformed(f"{name!r} must be an integer time")
    return value


def parse_token(token: str) -> ParsedToken:
    """Structure only (no signature or time check); raises TokenError(401, "malformed")."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise _malformed("too long")
    parts = token.split(".")
    if len(parts) != 4:
        raise _malformed("expected v1.KID.PAYLOAD.SIG")
    version, kid, payload, sig = parts
    if version != VERSION:
        raise _malformed(f"unknown version {version[:8]!r}")
    if not _KID.fullmatch(kid):
        raise _malformed("bad key id")
    try:
        raw = b64url_decode(payload)
        signature = b64url_decode(sig)
    except (ValueError, binascii.Error):
        raise _malformed("bad base64url") from None
    if len(signature) != 64:
        raise _malformed("bad signature length")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _malformed("payload is not JSON") from None
    if not isinstance(body, dict):
        raise _malformed("payload is not an object")
    scope = body.get("scope")
    if not isinstance(scope, str) or not valid_scope(scope):
        raise _malformed("bad scope")
    sub = body.get("sub")
    if sub is not None and (not isinstance(sub, str) or not 0 < len(sub) <= _SUB_MAX):
        raise _malformed("bad sub")
    claims = Claims(
        scope, _int_claim(body, "exp"), _int_claim(body, "nbf"), _int_claim(body, "iat"), sub
    )
    return ParsedToken(kid, claims, f"{version}.{kid}.{payload}".encode("ascii"), signature)


def sign(private: Ed25519PrivateKey, kid: str, claims: Claims) -> str:
    if not _KID.fullmatch(kid):
        raise ValueError(f"bad key id {kid!r}")
    payload = b64url_encode(json.dumps(claims.to_json(), separators=(",", ":")).encode())
    head = f"{VERSION}.{kid}.{payload}"
    return f"{head}.{b64url_encode(private.sign(head.encode('ascii')))}"


def verify(
    token: str,
    keys: Mapping[str, Ed25519PublicKey],
    now: float,
    skew: int = CLOCK_SKEW,
) -> Claims:
    """Signature and time window; scope is checked by ``authorize``."""
    parsed = parse_token(token)
    key = keys.get(parsed.kid)
    if key is None:
        raise TokenError(401, "unknown_key", f"unknown signing key {parsed.kid!r}")
    try:
        key.verify(parsed.signature, parsed.signed)
    except InvalidSignature:
        raise TokenError(401, "bad_signature", "token signature does not verify") from None
    claims = parsed.claims
    if now > claims.exp + skew:
        raise TokenError(401, "expired", "token expired")
    if now + skew < claims.nbf:
        raise TokenError(401, "not_yet_valid", "token not valid yet")
    return claims


def covers(claims: Claims, kind: str, name: str, owner: str | None) -> bool:
    if claims.scope_kind == "catalog":
        return owner is not None and claims.scope_name == owner
    return claims.scope_kind == kind and claims.scope_name == name


def authorize(
    token: str | None,
    kind: str,
    name: str,
    owner: str | None,
    keys: Mapping[str, Ed25519PublicKey],
    now: float,
    skew: int = CLOCK_SKEW,
) -> Claims:
    """A token-protected resource: the token must verify and cover ``kind/name``."""
    if not token:
        raise TokenError(401, "token_required", "this stream needs a playback token")
    claims = verify(token, keys, now, skew)
    if not covers(claims, kind, name, owner):
        raise TokenError(403, "wrong_scope", f"token is for {claims.scope}, not {kind}/{name}")
    return claims


def token_from_query(query: str) -> str | None:
    """The ``token`` parameter of a raw query string (first one wins), or None.

    Sans-IO and total: any string in, a string or None out (fuzzed). Same result as
    ``parse_qsl(query, keep_blank_values=True)`` over the first 32 fields, at a tenth of the
    cost (it runs on the FastPath for every protected request)."""
    if TOKEN_PARAM not in query and "%" not in query:
        return None
    for part in query.split("&", MAX_QUERY_FIELDS)[:MAX_QUERY_FIELDS]:
        key, _, value = part.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        if key == TOKEN_PARAM:
            if "%" in value or "+" in value:
                value = unquote_plus(value)
            return value if 0 < len(value) <= MAX_TOKEN_LENGTH else None
    return None


# ---- child URL rewriting --------------------------------------------------------------
# hls.js and Shaka do not carry the master's query string to child URLs, so playlists of a
# token-protected stream are rewritten per response: every URI gets ``?token=``. Any query
# a URI already had is dropped first (the packager never writes one), so a cached playlist
# can never leak another viewer's token.
_HLS_URI_ATTR = re.compile(r'URI="([^"?]*)(?:\?[^"]*)?"')
_MPD_ATTR = re.compile(r'\b(media|initialization|sourceURL)="([^"?]*)(?:\?[^"]*)?"')


def rewrite_hls(text: str, token: str) -> str:
    suffix = f"?{TOKEN_PARAM}={token}"
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = _HLS_URI_ATTR.sub(lambda m: f'URI="{m.group(1)}{suffix}"', line)
        elif line.strip():
            line = line.split("?", 1)[0] + suffix
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def rewrite_mpd(text: str, token: str) -> str:
    suffix = f"?{TOKEN_PARAM}={token}"
    return _MPD_ATTR.sub(lambda m: f'{m.group(1)}="{m.group(2)}{suffix}"', text)


def rewrite_manifest(path: str, body: bytes, token: str) -> bytes:
    text = body.decode("utf-8", "replace")
    rewritten = rewrite_mpd(text, token) if path.endswith(".mpd") else rewrite_hls(text, token)
    return rewritten.encode()


# ---- key sets (JWKS-like: the origin publishes, edges cache) -------------------------
def public_key_json(kid: str, key: Ed25519PublicKey) -> dict[str, str]:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url_encode(raw), "use": "sig"}


def parse_key_set(body: object) -> dict[str, Ed25519PublicKey]:
    """``{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": ..., "x": ...}]}``."""
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise ValueError("not a key set")
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in body["keys"]:
        if not isinstance(entry, dict) or entry.get("crv") != "Ed25519":
            continue
        kid, x = entry.get("kid"), entry.get("x")
        if isinstance(kid, str) and _KID.fullmatch(kid) and isinstance(x, str):
            raw = b64url_decode(x)
            if len(raw) == 32:
                keys[kid] = Ed25519PublicKey.from_public_bytes(raw)
    return keys
