"""AWS Signature Version 4 (and the SigV2 presigned query boto3 still emits), sans-IO.

Used by the edge's S3 API to verify requests and by ``meshcast.s3store`` to sign them. Pure
functions over method, raw path, raw query and headers, so they are unit-tested against
botocore's independent signer and fuzzed without sockets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import quote, unquote

ALGORITHM: Final = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER: Final = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER: Final = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
# AWS's own limits: a signed request is valid 15 minutes around its date, a presigned URL
# at most 7 days.
MAX_SKEW: Final = timedelta(minutes=15)
MAX_EXPIRES: Final = 7 * 24 * 3600

_AUTH_RE: Final = re.compile(r"AWS4-HMAC-SHA256\s+(.*)", re.S)
_SPACES: Final = re.compile(r"\s+")


class SigError(Exception):
    """A request whose authentication is missing or wrong; ``code`` is the S3 error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Credential:
    access_key: str
    date: str  # YYYYMMDD
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True, slots=True)
class AuthHeader:
    credential: Credential
    signed_headers: tuple[str, ...]
    signature: str


def parse_credential(value: str) -> Credential:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts[:4]):
        raise SigError("AuthorizationHeaderMalformed", f"malformed credential {value!r}")
    if not re.fullmatch(r"\d{8}", parts[1]):
        raise SigError("AuthorizationHeaderMalformed", "credential date must be YYYYMMDD")
    return Credential(parts[0], parts[1], parts[2], parts[3])


def parse_authorization(value: str) -> AuthHeader:
    """Parse ``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…``."""
    match = _AUTH_RE.fullmatch(value.strip())
    if match is None:
        raise SigError("AuthorizationHeaderMalformed", "not an AWS4-HMAC-SHA256 authorization")
    fields: dict[str, str] = {}
    for part in match.group(1).split(","):
        name, sep, val = part.strip().partition("=")
        if not sep or name in fields:
            raise SigError("AuthorizationHeaderMalformed", f"bad authorization field {part!r}")
        fields[name] = val
    try:
        credential = parse_credential(fields["Credential"])
        signed = fields["SignedHeaders"]
        signature = fields["Signature"]
    except KeyError as exc:
        raise SigError("AuthorizationHeaderMalformed", f"missing {exc.args[0]}") from None
    return AuthHeader(credential, parse_signed_headers(signed), _check_signature(signature))


def parse_signed_headers(value: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or any(not n or n != n.lower() or n.strip() != n for n in names):
        raise SigError("AuthorizationHeaderMalformed", f"bad SignedHeaders {value!r}")
    if "host" not in names:
        raise SigError("AuthorizationHeaderMalformed", "the host header must be signed")
    return names


def _check_signature(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise SigError("AuthorizationHeaderMalformed", "signature must be 64 hex digits")
    return value


def uri_encode(value: str) -> str:
    return quote(value, safe="-_.~")


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decoded (name, value) pairs in order; '+' stays a plus (AWS clients encode spaces
    as %20, and S3 reads '+' in a query literally only after decoding)."""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]], *, exclude: str | None = None) -> str:
    encoded = sorted((uri_encode(k), uri_encode(v)) for k, v in pairs if k != exclude)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(_SPACES.sub(" ", value.strip()))
    lines = []
    for name in signed:
        if name not in values:
            raise SigError("SignatureDoesNotMatch", f"signed header {name!r} is missing")
        lines.append(f"{name}:{','.join(values[name])}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    raw_path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    signed: Sequence[str],
    payload_hash: str,
) -> str:
    # S3 signs the path as sent (already URI-encoded, no normalisation), unlike other
    # services; raw_path must therefore be the undecoded request target.
    return "\n".join(
        [
            method,
            raw_path or "/",
            query,
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        ]
    )


def string_to_sign(amz_date: str, credential: Credential, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{credential.scope}\n{digest}"


def signing_key(secret: str, credential: Credential) -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), credential.date)
    key = _hmac(key, credential.region)
    key = _hmac(key, credential.service)
    return _hmac(key, "aws4_request")


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def parse_amz_date(value: str) -> datetime:
    try:
        return datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SigError("AccessDenied", f"bad X-Amz-Date {value!r}") from None


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose signature checked out; ``payload_hash`` is what the body must hash
    to (hex SHA-256), or UNSIGNED-PAYLOAD / a STREAMING-… marker."""

    access_key: str
    payload_hash: str
    credential: Credential | None = None
    seed_signature: str | None = None
    amz_date: str | None = None
    key: bytes | None = None


def verify_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    secret_for: Callable[[str], str],
    now: datetime,
    *,
    service: str = "s3",
    region: str = "us-east-1",
    mount: str = "",
) -> Verified:
    """Check a header-signed, SigV4-presigned or SigV2-presigned request.

    ``secret_for(access_key)`` returns the secret or raises SigError (InvalidAccessKeyId).
    ``region``/``service``: what the credential scope must name (ours, as AWS checks its
    own). ``mount``: the path prefix the S3 API is served under; SigV2 signs the
    bucket/key path without it (botocore's ``auth_path``).

    Every ``x-amz-*`` header must be covered by the signature (AWS: "There were headers
    present in the request which were not signed"): those headers change what a request
    does (``x-amz-copy-source`` turns a PUT into a copy, ``x-amz-metadata-directive``,
    ``x-amz-acl`` …), so a signature over the rest must not let a third party add them.
    """
    lower = {name.lower(): value for name, value in headers}
    pairs = parse_query(raw_query)
    query = dict(pairs)
    if "authorization" in lower:
        if lower["authorization"].startswith("AWS "):
            raise SigError("AccessDenied", "signature version 2 is not supported; use SigV4")
        auth = parse_authorization(lower["authorization"])
        amz_date = lower.get("x-amz-date")
        if amz_date is None:
            raise SigError("AccessDenied", "X-Amz-Date is required")
        payload = lower.get("x-amz-content-sha256")
        if payload is None:
            raise SigError("InvalidRequest", "x-amz-content-sha256 is required")
        if payload not in _PAYLOAD_MARKERS and not re.fullmatch(r"[0-9a-f]{64}", payload):
            raise SigError("InvalidArgument", "x-amz-content-sha256 must be a hex SHA-256")
        when = parse_amz_date(amz_date)
        if abs(now - when) > MAX_SKEW:
            raise SigError("RequestTimeTooSkewed", "the request time is too far from ours")
        _check_scope(auth.credential, amz_date, service, region, "AuthorizationHeaderMalformed")
        _check_signed_amz_headers(headers, auth.signed_headers)
        secret = secret_for(auth.credential.access_key)
        canonical = canonical_request(
            method, raw_path, canonical_query(pairs), headers, auth.signed_headers, payload
        )
        key = signing_key(secret, auth.credential)
        expected = sign(key, string_to_sign(amz_date, auth.credential, canonical))
        if not hmac.compare_digest(expected, auth.signature):
            raise SigError("SignatureDoesNotMatch", "the request signature does not match")
        return Verified(
            auth.credential.access_key, payload, auth.credential, auth.signature, amz_date, key
        )
    if query.get("X-Amz-Algorithm") is not None:
        return _verify_presigned(
            method, raw_path, pairs, query, headers, secret_for, now, service, region
        )
    if "Signature" in query and "AWSAccessKeyId" in query:
        resource = raw_path.removeprefix(mount) if raw_path.startswith(mount + "/") else raw_path
        return _verify_presigned_v2(method, resource, pairs, query, headers, secret_for, now)
    raise SigError("AccessDenied", "anonymous access is not allowed")


_PAYLOAD_MARKERS: Final = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER}
)


def _check_scope(
    credential: Credential, amz_date: str, service: str, region: str, code: str
) -> None:
    if credential.date != amz_date[:8]:
        raise SigError(code, "credential date differs from X-Amz-Date")
    if credential.service != service:
        raise SigError(code, f"credential service must be {service}")
    if credential.region != region:
        raise SigError(
            code, f"the region {credential.region[:64]!r} is wrong; expecting {region!r}"
        )


def _check_signed_amz_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> None:
    covered = set(signed)
    unsigned = sorted({n.lower() for n, _ in headers if n.lower().startswith("x-amz-")} - covered)
    if unsigned:
        raise SigError(
            "AccessDenied",
            "There were headers present in the request which were not signed: "
            + ", ".join(unsigned)[:200],
        )


def _verify_presigned(
    method: str,
    raw_path: str,
    pairs: list[tuple[str, str]],
    query: dict[str, str],
    headers: Sequence[tuple[str, str]],
    secret_for: Callable[[str], str],
    now: datetime,
    service: str,
    region: str,
) -> Verified:
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise SigError("AuthorizationQueryParametersError", "X-Amz-Algorithm must be SigV4")
    try:
        credential = parse_credential(query["X-Amz-Credential"])
        amz_date = query["X-Amz-Date"]
        expires = int(query["X-Amz-Expires"])
        signed = parse_signed_headers(query["X-Amz-SignedHeaders"])
        signature = _check_signature(query["X-Amz-Signature"])
    except (KeyError, ValueError) as exc:
        raise SigError(
            "AuthorizationQueryParametersError", f"bad presigned query parameters: {exc}"
        ) from None
    if not 0 < expires <= MAX_EXPIRES:
        raise SigError("AuthorizationQueryParametersError", "X-Amz-Expires out of range")
    when = parse_amz_date(amz_date)
    if now > when + timedelta(seconds=expires):
        raise SigError("AccessDenied", "Request has expired")
    if when - now > MAX_SKEW:
        raise SigError("AccessDenied", "the request is dated in the future")
    _check_scope(credential, amz_date, service, region, "AuthorizationQueryParametersError")
    _check_signed_amz_headers(headers, signed)
    secret = secret_for(credential.access_key)
    payload = query.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    canonical = canonical_request(
        method,
        raw_path,
        canonical_query(pairs, exclude="X-Amz-Signature"),
        headers,
        signed,
        payload,
    )
    key = signing_key(secret, credential)
    expected = sign(key, string_to_sign(amz_date, credential, canonical))
    if not hmac.compare_digest(expected, signature):
        raise SigError("SignatureDoesNotMatch", "the request signature does not match")
    return Verified(credential.access_key, payload, credential, signature, amz_date, key)


# Sub-resources that SigV2 includes in the string to sign (a subset: what GET/PUT presigned
# URLs carry).
_V2_SUBRESOURCES: Final = (
    "acl",
    "partNumber",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "uploadId",
    "uploads",
    "versionId",
)


def _verify_presigned_v2(
    method: str,
    raw_path: str,
    pairs: list[tuple[str, str]],
    query: dict[str, str],
    headers: Sequence[tuple[str, str]],
    secret_for: Callable[[str], str],
    now: datetime,
) -> Verified:
    """boto3 presigns S3 URLs with SigV2 unless told ``signature_version='s3v4'``; accept
    those query-signed GET/HEAD/PUT URLs too (header-signed SigV2 is refused). SigV2 signs
    every ``x-amz-*`` header (CanonicalizedAmzHeaders): one added later breaks it."""
    try:
        expires = int(query["Expires"])
    except ValueError:
        raise SigError("AccessDenied", "bad Expires") from None
    if now.timestamp() > expires:
        raise SigError("AccessDenied", "Request has expired")
    if expires - now.timestamp() > MAX_EXPIRES:
        raise SigError("AccessDenied", "Expires too far in the future")
    secret = secret_for(query["AWSAccessKeyId"])
    subs = sorted((k, v) for k, v in pairs if k in _V2_SUBRESOURCES)
    resource = raw_path
    if subs:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subs)
    text = f"{method}\n\n\n{expires}\n{_canonical_amz_headers(headers)}{resource}"
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
    expected = base64.b64encode(digest).decode()
    if not hmac.compare_digest(expected, query["Signature"]):
        raise SigError("SignatureDoesNotMatch", "the request signature does not match")
    return Verified(query["AWSAccessKeyId"], UNSIGNED_PAYLOAD)


def _canonical_amz_headers(headers: Sequence[tuple[str, str]]) -> str:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower().startswith("x-amz-"):
            values.setdefault(name.lower(), []).append(_SPACES.sub(" ", value.strip()))
    return "".join(f"{name}:{','.join(values[name])}\n" for name in sorted(values))


def sign_headers(
    method: str,
    url_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    access_key: str,
    secret: str,
    payload_hash: str,
    now: datetime,
    region: str = "us-east-1",
    service: str = "s3",
) -> dict[str, str]:
    """Headers to add to a request so that an S3 server accepts it (header auth).

    ``url_path`` is the URI-encoded path as it goes on the wire; ``headers`` must include
    ``host``.
    """
    amz_date = now.strftime(AMZ_DATE_FORMAT)
    credential = Credential(access_key, amz_date[:8], region, service)
    all_headers = {k.lower(): v for k, v in headers.items()}
    all_headers["x-amz-date"] = amz_date
    all_headers["x-amz-content-sha256"] = payload_hash
    signed = tuple(sorted(all_headers))
    canonical = canonical_request(
        method,
        url_path,
        canonical_query(parse_query(raw_query)),
        list(all_headers.items()),
        signed,
        payload_hash,
    )
    signature = sign(
        signing_key(secret, credential), string_to_sign(amz_date, credential, canonical)
    )
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
        "authorization": f"{ALGORITHM} Credential={access_key}/{credential.scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}",
    }


def chunk_string_to_sign(
    amz_date: str, credential: Credential, previous: str, chunk_sha256: str
) -> str:
    """String to sign of one aws-chunked chunk (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)."""
    return (
        f"{ALGORITHM}-PAYLOAD\n{amz_date}\n{credential.scope}\n{previous}\n"
        f"{EMPTY_SHA256}\n{chunk_sha256}"
    )
