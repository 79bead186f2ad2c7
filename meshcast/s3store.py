"""Segment store on any S3-compatible service (our edges' ``/s3``, Ceph RGW, MinIO, AWS).

``s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT/s3[&region=us-east-1]``; credentials from
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (never in the URL: it ends up in logs and
process lists). Path-style requests signed with our SigV4 signer over a plain httpx client:
no SDK dependency. Synchronous, like the SegmentStore protocol (transcoder workers are
processes of their own).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote, urlsplit
from xml.etree import ElementTree as ET

import httpx

from meshcast import sigv4

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3StoreError(OSError):
    """The store refused or failed a request (an I/O error to callers, like a full disk)."""


@dataclass(frozen=True, slots=True)
class S3Location:
    endpoint: str
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"

    @classmethod
    def parse(cls, spec: str) -> S3Location:
        parts = urlsplit(spec)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://BUCKET[/PREFIX]?endpoint=URL store: {spec!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        endpoint = query.get("endpoint")
        if not endpoint or urlsplit(endpoint).scheme not in ("http", "https"):
            raise ValueError("the store URL needs ?endpoint=http(s)://HOST:PORT[/PATH]")
        prefix = parts.path.strip("/")
        return cls(
            endpoint.rstrip("/"),
            parts.netloc,
            prefix + "/" if prefix else "",
            query.get("region", "us-east-1"),
        )


class S3Store:
    def __init__(
        self,
        location: S3Location,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.location = location
        self.access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID", "")
        self.secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not self.access_key or not self.secret_key:
            raise S3StoreError("S3 store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        self.client = httpx.Client(timeout=timeout)
        endpoint = urlsplit(location.endpoint)
        self._host = endpoint.netloc
        self._base_path = endpoint.path

    def _path(self, key: str = "") -> str:
        path = f"{self._base_path}/{self.location.bucket}"
        if key:
            path += "/" + quote(self.location.prefix + key, safe="/-_.~")
        return path

    def _request(
        self, method: str, path: str, query: str = "", body: bytes = b"", **headers: str
    ) -> httpx.Response:
        payload = hashlib.sha256(body).hexdigest()
        signed = sigv4.sign_headers(
            method,
            path,
            query,
            {"host": self._host},
            self.access_key,
            self.secret_key,
            payload,
            datetime.now(UTC),
            self.location.region,
        )
        url = f"{self.location.endpoint.removesuffix(self._base_path)}{path}"
        if query:
            url += "?" + query
        response = self.client.request(
            method, url, content=body, headers={**headers, **signed, "host": self._host}
        )
        return response

    @staticmethod
    def _raise(response: httpx.Response, what: str) -> None:
        code = ""
        try:
            node = ET.fromstring(response.content).find("Code")  # noqa: S314  (our server)
            code = node.text or "" if node is not None else ""
        except ET.ParseError:
            pass
        raise S3StoreError(f"S3 store: {what}: HTTP {response.status_code} {code}".rstrip())

    def put(self, key: str, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        r = self._request("PUT", self._path(key), body=data, **{"content-type": _type(key)})
        if r.status_code != 200:
            self._raise(r, f"PUT {key}")

    def get(self, key: str) -> bytes | None:
        """Not part of SegmentStore: what an origin reading from S3 would call."""
        r = self._request("GET", self._path(key))
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            self._raise(r, f"GET {key}")
        return r.content

    def delete(self, key: str) -> None:
        r = self._request("DELETE", self._path(key))
        if r.status_code not in (200, 204):
            self._raise(r, f"DELETE {key}")

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (relative to the store's own prefix)."""
        found: list[str] = []
        token: str | None = None
        full_prefix = self.location.prefix + prefix
        while True:
            params = [("list-type", "2"), ("prefix", full_prefix)]
            if token is not None:
                params.append(("continuation-token", token))
            query = "&".join(f"{k}={sigv4.uri_encode(v)}" for k, v in params)
            r = self._request("GET", self._path(), query)
            if r.status_code != 200:
                self._raise(r, f"LIST {prefix}")
            root = ET.fromstring(r.content)  # noqa: S314
            for node in root.iter(f"{_NS}Key"):
                found.append((node.text or "").removeprefix(self.location.prefix))
            truncated = root.findtext(f"{_NS}IsTruncated") == "true"
            token = root.findtext(f"{_NS}NextContinuationToken")
            if not truncated or token is None:
                return found

    def clear(self, prefix: str) -> None:
        # One DELETE per key keeps to the most basic API every S3 clone implements.
        base = prefix.rstrip("/") + "/"
        for key in self.keys(base):
            self.delete(key)

    def close(self) -> None:
        self.client.close()


_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".vtt": "text/vtt",
}


def _type(key: str) -> str:
    for suffix, value in _TYPES.items():
        if key.endswith(suffix):
            return value
    return "application/octet-stream"
