"""SigV4 verification checked against botocore's signer (an independent implementation),
plus fuzzing of the header and query parsers."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.auth import HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st

from meshcast import sigv4
from meshcast.sigv4 import SigError, verify_request

AK, SK = "MCAKIDEXAMPLE0000000", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CREDS = Credentials(AK, SK)


def secret_for(access_key: str) -> str:
    if access_key != AK:
        raise SigError("InvalidAccessKeyId", "unknown")
    return SK


def botocore_signed(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> AWSRequest:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    S3SigV4Auth(CREDS, "s3", "us-east-1").add_auth(request)
    return request


def check(request: AWSRequest, now: dt.datetime | None = None) -> sigv4.Verified:
    parts = urlsplit(request.url)
    headers = [(k, v) for k, v in request.headers.items()]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.append(("host", parts.netloc))
    return verify_request(
        request.method,
        parts.path,
        parts.query,
        headers,
        secret_for,
        now or dt.datetime.now(dt.UTC),
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/s3/bucket/key",
        "http://127.0.0.1:9000/s3/bucket/d%C3%A9j%C3%A0%20vu/%2B%26%3D%3F.txt",
        "http://127.0.0.1:9000/s3/bucket?list-type=2&prefix=a%2Fb%20c&delimiter=%2F",
        "http://127.0.0.1:9000/s3/bucket/key?uploads",
        "http://127.0.0.1:9000/s3/bucket/key?partNumber=3&uploadId=abc%2Bdef",
    ],
)
def test_botocore_header_signatures_verify(url: str) -> None:
    body = b"hello world"
    request = botocore_signed("PUT", url, body, {"Content-Type": "text/plain; charset=x"})
    verified = check(request)
    assert verified.access_key == AK
    assert verified.payload_hash == sigv4.hashlib.sha256(body).hexdigest()


def test_any_change_breaks_the_signature() -> None:
    url = "http://127.0.0.1:9000/s3/bucket/key?partNumber=1&uploadId=x"
    request = botocore_signed("PUT", url, b"abc", {"Content-Type": "text/plain"})
    check(request)
    for mutate in (
        lambda r: setattr(r, "method", "POST"),
        lambda r: setattr(r, "url", r.url.replace("/key", "/kez")),
        lambda r: setattr(r, "url", r.url.replace("partNumber=1", "partNumber=2")),
        lambda r: r.headers.replace_header("Content-Type", "text/html"),
        lambda r: r.headers.replace_header("X-Amz-Content-SHA256", "0" * 64),
    ):
        bad = botocore_signed("PUT", url, b"abc", {"Content-Type": "text/plain"})
        mutate(bad)
        with pytest.raises(SigError) as exc:
            check(bad)
        assert exc.value.code == "SignatureDoesNotMatch"


def test_wrong_secret_unknown_key_and_skew() -> None:
    request = AWSRequest(method="GET", url="http://h/s3/b/k")
    S3SigV4Auth(Credentials(AK, "other"), "s3", "us-east-1").add_auth(request)
    with pytest.raises(SigError, match="does not match"):
        check(request)
    request = AWSRequest(method="GET", url="http://h/s3/b/k")
    S3SigV4Auth(Credentials("NOPE", SK), "s3", "us-east-1").add_auth(request)
    with pytest.raises(SigError) as exc:
        check(request)
    assert exc.value.code == "InvalidAccessKeyId"
    request = botocore_signed("GET", "http://h/s3/b/k")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    with pytest.raises(SigError) as exc:
        check(request, later)
    assert exc.value.code == "RequestTimeTooSkewed"


def test_botocore_presigned_v4_verifies_and_expires() -> None:
    request = AWSRequest(method="GET", url="http://127.0.0.1:9/s3/b/some%20key", headers={})
    S3SigV4QueryAuth(CREDS, "s3", "us-east-1", expires=60).add_auth(request)
    request.headers["host"] = "127.0.0.1:9"
    assert "X-Amz-Signature=" in request.url
    assert check(request).payload_hash == sigv4.UNSIGNED_PAYLOAD
    with pytest.raises(SigError, match="expired"):
        check(request, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120))
    tampered = AWSRequest(method="GET", url=request.url.replace("some%20key", "other"))
    with pytest.raises(SigError):
        check(tampered)


def test_credential_scope_must_name_our_region() -> None:
    """Attack 4 of issue 20: a credential scoped to another region was accepted."""
    request = AWSRequest(method="PUT", url="http://h/s3/b/k", data=b"x")
    S3SigV4Auth(CREDS, "s3", "eu-west-3").add_auth(request)
    with pytest.raises(SigError, match="region 'eu-west-3' is wrong; expecting 'us-east-1'"):
        check(request)
    presigned = AWSRequest(method="GET", url="http://h/s3/b/k")
    S3SigV4QueryAuth(CREDS, "s3", "ap-south-1", expires=60).add_auth(presigned)
    presigned.headers["host"] = "h"
    with pytest.raises(SigError) as exc:
        check(presigned)
    assert exc.value.code == "AuthorizationQueryParametersError"
    # A server configured for another region accepts exactly that one.
    parts = urlsplit(request.url)
    headers = [*request.headers.items(), ("host", parts.netloc)]
    now = dt.datetime.now(dt.UTC)
    verified = verify_request("PUT", parts.path, "", headers, secret_for, now, region="eu-west-3")
    assert verified.access_key == AK


COPY = ("x-amz-copy-source", "/secrets/db-password.txt")


def test_unsigned_amz_headers_are_refused_header_auth() -> None:
    request = botocore_signed("PUT", "http://h/s3/uploads/avatar.png", b"img")
    request.headers[COPY[0]] = COPY[1]  # added after signing: not in SignedHeaders
    with pytest.raises(SigError, match="not signed: x-amz-copy-source") as exc:
        check(request)
    assert exc.value.code == "AccessDenied"
    # Signed by the client (botocore signs every header it sends): accepted.
    signed = botocore_signed("PUT", "http://h/s3/uploads/avatar.png", b"", dict([COPY]))
    assert check(signed).access_key == AK


def test_unsigned_amz_headers_are_refused_presigned_v4() -> None:
    """Attack 4 of issue 20: a presigned PUT plus an unsigned x-amz-copy-source header
    became a CopyObject of a secret."""
    request = AWSRequest(method="PUT", url="http://h/s3/uploads/avatar.png", headers={})
    S3SigV4QueryAuth(CREDS, "s3", "us-east-1", expires=60).add_auth(request)
    request.headers["host"] = "h"
    check(request)
    for name, value in (COPY, ("X-Amz-Metadata-Directive", "REPLACE"), ("x-amz-acl", "public")):
        attack = AWSRequest(method="PUT", url=request.url, headers={"host": "h", name: value})
        with pytest.raises(SigError, match="not signed") as exc:
            check(attack)
        assert exc.value.code == "AccessDenied"


def test_amz_headers_are_part_of_a_presigned_v2_signature() -> None:
    request = AWSRequest(method="PUT", url="http://h/s3/uploads/avatar.png", headers={})
    HmacV1QueryAuth(CREDS, expires=60).add_auth(request)
    check(request)
    attack = AWSRequest(method="PUT", url=request.url, headers=dict([COPY]))
    with pytest.raises(SigError) as exc:
        check(attack)
    assert exc.value.code == "SignatureDoesNotMatch"


def test_botocore_presigned_v2_verifies() -> None:
    request = AWSRequest(method="GET", url="http://127.0.0.1:9/s3/b/k%C3%A9y", headers={})
    HmacV1QueryAuth(CREDS, expires=60).add_auth(request)
    assert check(request).access_key == AK
    with pytest.raises(SigError, match="expired"):
        check(request, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120))
    tampered = AWSRequest(method="PUT", url=request.url)
    with pytest.raises(SigError):
        check(tampered)


def test_our_signer_matches_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: now)
    body = b"segment bytes"
    payload = sigv4.hashlib.sha256(body).hexdigest()
    path, query = "/s3/bucket/live/a%20b/1.m4s", "x-id=PutObject"
    ours = sigv4.sign_headers(
        "PUT", path, query, {"host": "127.0.0.1:9000"}, AK, SK, payload, now, "us-east-1"
    )
    request = AWSRequest(method="PUT", url=f"http://127.0.0.1:9000{path}?{query}", data=body)
    S3SigV4Auth(CREDS, "s3", "us-east-1").add_auth(request)
    assert request.headers["Authorization"] == ours["authorization"]
    assert request.headers["X-Amz-Date"] == ours["x-amz-date"]


@given(st.text(max_size=300))
def test_parse_authorization_never_crashes(value: str) -> None:
    try:
        auth = sigv4.parse_authorization(value)
    except SigError as exc:
        assert exc.code == "AuthorizationHeaderMalformed"
    else:
        assert "host" in auth.signed_headers and len(auth.signature) == 64


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=10), st.text(max_size=10)),
        max_size=6,
    )
)
def test_query_roundtrip(pairs: list[tuple[str, str]]) -> None:
    raw = "&".join(f"{sigv4.uri_encode(k)}={sigv4.uri_encode(v)}" for k, v in pairs)
    assert sigv4.parse_query(raw) == pairs
    canonical = sigv4.canonical_query(pairs)
    assert sigv4.canonical_query(sigv4.parse_query(canonical)) == canonical


@given(st.text(max_size=200), st.text(max_size=100))
def test_verify_rejects_garbage_cleanly(auth: str, query: str) -> None:
    with pytest.raises(SigError):
        verify_request(
            "GET",
            "/s3/b/k",
            query,
            [("host", "h"), ("authorization", auth)],
            secret_for,
            dt.datetime.now(dt.UTC),
        )
