"""S3 wire formats, sans-IO: ListObjects pagination, XML documents and errors."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from xml.etree import ElementTree as ET

from starlette.responses import Response

XMLNS: Final = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS: Final = 1000

# Status of each error code we send (AWS's own table, the codes we use).
ERROR_STATUS: Final = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "PreconditionFailed": 412,
    "RequestTimeout": 400,
    "RequestTimeTooSkewed": 403,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400,
}


class S3Error(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def status(self) -> int:
        return ERROR_STATUS.get(self.code, 400)


def error_response(code: str, message: str, resource: str, head: bool = False) -> Response:
    root = ET.Element("Error")
    for name, value in (
        ("Code", code),
        ("Message", message),
        ("Resource", resource),
        ("RequestId", uuid.uuid4().hex[:16].upper()),
    ):
        ET.SubElement(root, name).text = value
    status = ERROR_STATUS.get(code, 400)
    if head:  # HEAD responses carry no body; clients read the status
        return Response(status_code=status, headers={"x-amz-error-code": code})
    return xml_response(root, status)


def xml_response(root: ET.Element, status: int = 200) -> Response:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")
    return Response(body, status, media_type="application/xml")


def element(tag: str, **children: str | int | None) -> ET.Element:
    root = ET.Element(tag, xmlns=XMLNS)
    for name, value in children.items():
        if value is not None:
            ET.SubElement(root, name).text = str(value)
    return root


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_BUCKET_RE: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_bucket_name(name: str) -> str:
    if not _BUCKET_RE.fullmatch(name) or ".." in name or re.fullmatch(r"[\d.]+", name):
        raise S3Error("InvalidBucketName", f"invalid bucket name {name!r}")
    return name


def check_key(key: str) -> str:
    if not key:
        raise S3Error("InvalidArgument", "empty object key")
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise S3Error("KeyTooLongError", "object keys are at most 1024 bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "object keys must be valid UTF-8") from None
    return key


# ---- ListObjects ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListParams:
    prefix: str = ""
    delimiter: str = ""
    max_keys: int = MAX_KEYS
    # Exclusive lower bound: keys (and common prefixes) <= it were returned already.
    after: str = ""
    v2: bool = True
    encoding_url: bool = False
    start_after: str = ""
    continuation: str | None = None
    marker: str = ""
    fetch_owner: bool = False


def parse_list_params(query: dict[str, str]) -> ListParams:
    v2 = query.get("list-type") == "2"
    try:
        max_keys = int(query.get("max-keys", str(MAX_KEYS)))
    except ValueError:
        raise S3Error("InvalidArgument", "max-keys must be an integer") from None
    if max_keys < 0:
        raise S3Error("InvalidArgument", "max-keys must not be negative")
    max_keys = min(max_keys, MAX_KEYS)
    encoding = query.get("encoding-type")
    if encoding not in (None, "url"):
        raise S3Error("InvalidArgument", "encoding-type must be url")
    continuation = query.get("continuation-token") if v2 else None
    start_after = query.get("start-after", "") if v2 else ""
    marker = "" if v2 else query.get("marker", "")
    after = start_after or marker
    if continuation is not None:
        after = decode_token(continuation)
    return ListParams(
        prefix=query.get("prefix", ""),
        delimiter=query.get("delimiter", ""),
        max_keys=max_keys,
        after=after,
        v2=v2,
        encoding_url=encoding == "url",
        start_after=start_after,
        continuation=continuation,
        marker=marker,
        fetch_owner=query.get("fetch-owner") == "true",
    )


def encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "the continuation token is not valid") from None


@dataclass(slots=True)
class ListPage:
    keys: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    # The last key or common prefix returned: the next page starts after it.
    last: str = ""


def list_page(sorted_keys: Sequence[str], params: ListParams) -> ListPage:
    """One page of a listing over ``sorted_keys`` (ascending, unique), S3 semantics: keys
    under ``prefix``, those with ``delimiter`` after the prefix rolled into common prefixes,
    at most ``max_keys`` entries (keys + prefixes) after ``after``."""
    page = ListPage()
    count = 0
    for key in sorted_keys:
        if not key.startswith(params.prefix) or key <= params.after:
            continue
        entry, is_prefix = key, False
        if params.delimiter:
            pos = key.find(params.delimiter, len(params.prefix))
            if pos >= 0:
                entry, is_prefix = key[: pos + len(params.delimiter)], True
        if is_prefix and (entry == page.last or entry <= params.after):
            continue  # a common prefix counts once; a prefix returned earlier stays returned
        if count == params.max_keys:
            page.truncated = True
            break
        (page.prefixes if is_prefix else page.keys).append(entry)
        page.last = entry
        count += 1
    return page


def parse_complete_parts(body: bytes) -> list[tuple[int, str]]:
    """(PartNumber, ETag) pairs of a CompleteMultipartUpload document."""
    try:
        root = ET.fromstring(body)  # noqa: S314  (bounded body; no entity expansion in expat)
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML is not well-formed") from None
    parts = []
    for part in root.iter():
        if part.tag.rsplit("}", 1)[-1] != "Part":
            continue
        number = etag = None
        for child in part:
            name = child.tag.rsplit("}", 1)[-1]
            if name == "PartNumber":
                number = child.text
            elif name == "ETag":
                etag = child.text
        if number is None or etag is None or not number.strip().isdigit():
            raise S3Error("MalformedXML", "each Part needs a PartNumber and an ETag")
        parts.append((int(number), etag.strip().strip('"')))
    if not parts:
        raise S3Error("MalformedXML", "no parts")
    return parts


def parse_delete_keys(body: bytes) -> tuple[list[str], bool]:
    try:
        root = ET.fromstring(body)  # noqa: S314
    except ET.ParseError:
        raise S3Error("MalformedXML", "the XML is not well-formed") from None
    keys, quiet = [], False
    for node in root.iter():
        name = node.tag.rsplit("}", 1)[-1]
        if name == "Key" and node.text is not None:
            keys.append(node.text)
        elif name == "Quiet":
            quiet = (node.text or "").strip().lower() == "true"
    return keys, quiet
