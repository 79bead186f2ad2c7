"""S3-compatible API (path-style) under ``/s3/`` on an edge.

Buckets, PUT/GET/HEAD/DELETE object (Range, conditional GET, user metadata, copy),
ListObjects V1/V2, DeleteObjects, multipart upload (create/part/complete/abort), SigV4
header and presigned auth, XML errors. Bodies are streamed: at most one chunk (4 MiB by
default) of an object is held in memory while it is hashed and sent to its replicas.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import shutil
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Final
from urllib.parse import quote, unquote
from xml.etree import ElementTree as ET

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from edge.http_semantics import RangeNotSatisfiable, parse_range
from edge.plugins.storage import chunked
from edge.plugins.storage.blobs import NS_BUCKET, NS_OBJECT, Manifest
from edge.plugins.storage.cluster import Cluster, Unavailable
from edge.plugins.storage.s3xml import (
    S3Error,
    check_bucket_name,
    check_key,
    element,
    encode_token,
    error_response,
    iso,
    list_page,
    parse_complete_parts,
    parse_delete_keys,
    parse_list_params,
    xml_response,
)
from meshcast import sigv4
from meshcast.bodies import BodyTimeout, BodyTooLarge, stream_body
from meshcast.config import StorageConfig
from meshcast.keys import KeyRejected, KeyStore

log = logging.getLogger(__name__)

PREFIX: Final = "/s3"
MAX_XML_BODY: Final = 1024 * 1024
MIN_PART: Final = 5 * 1024 * 1024
MAX_PARTS: Final = 10_000
_META_PREFIX: Final = "x-amz-meta-"


@dataclass(slots=True)
class Written:
    chunks: list[tuple[str, int]]
    size: int
    md5: str
    sha256: str
    crc32: int


@dataclass(slots=True)
class Hashes:
    md5: Any
    sha256: Any
    crc32: int = 0

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        self.sha256.update(data)
        self.crc32 = zlib.crc32(data, self.crc32)


async def write_chunks(
    cluster: Cluster,
    body: AsyncIterator[bytes],
    chunk_size: int,
    limit: int,
    in_flight: int = 2,
) -> Written:
    """Split a body into chunks, hash them (in a thread) and store each on its owners.

    Up to ``in_flight`` chunks are being replicated while the next one is received, so
    memory stays bounded (in_flight + 1 chunks) and the network/disk overlap.
    """
    hashes = Hashes(hashlib.md5(usedforsecurity=False), hashlib.sha256())
    chunks: list[tuple[str, int]] = []
    pending: list[asyncio.Task[None]] = []
    buffer = bytearray()
    size = 0

    async def flush(data: bytes) -> None:
        def hash_chunk() -> str:
            hashes.update(data)  # in order: the whole-object digests chain across chunks
            return hashlib.sha256(data).hexdigest()

        digest = await asyncio.to_thread(hash_chunk)
        chunks.append((digest, len(data)))
        pending.append(asyncio.create_task(cluster.put_chunk(digest, data)))
        while len(pending) > in_flight:
            await pending.pop(0)

    try:
        async for piece in body:
            size += len(piece)
            if size > limit:
                raise S3Error("EntityTooLarge", f"objects are at most {limit} bytes here")
            buffer += piece
            while len(buffer) >= chunk_size:
                data = bytes(buffer[:chunk_size])
                del buffer[:chunk_size]
                await flush(data)
        if buffer:
            await flush(bytes(buffer))
        while pending:
            await pending.pop(0)
    finally:
        # A failed upload must not leave replication tasks (or their errors) behind.
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return Written(chunks, size, hashes.md5.hexdigest(), hashes.sha256.hexdigest(), hashes.crc32)


def multipart_etag(md5s: list[str]) -> str:
    joined = b"".join(bytes.fromhex(m) for m in md5s)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(md5s)}"


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


class S3Api:
    def __init__(self, cluster: Cluster, keys: KeyStore, config: StorageConfig) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.keys = keys
        self.config = config

    def routes(self) -> list[BaseRoute]:
        methods = ["GET", "HEAD", "PUT", "POST", "DELETE"]
        return [
            Route(PREFIX, self.handle, methods=methods),
            Route(PREFIX + "/{rest:path}", self.handle, methods=methods),
        ]

    # ---- dispatch -----------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        # The decoded path: request.url re-quotes some characters ('?' stays %3F).
        path: str = request.scope["path"]
        try:
            verified = self._authenticate(request)
            rest = path[len(PREFIX) :].lstrip("/")
            bucket, _, key = rest.partition("/")
            query = dict(sigv4.parse_query(request.url.query))
            if not bucket:
                if request.method != "GET":
                    raise S3Error("MethodNotAllowed", "only GET on the service")
                return await self.list_buckets()
            check_bucket_name(bucket)
            if not key:
                return await self._bucket_op(request, verified, bucket, query)
            check_key(key)
            return await self._object_op(request, verified, bucket, key, query)
        except sigv4.SigError as exc:
            return self._error(request, exc.code, str(exc))
        except S3Error as exc:
            return self._error(request, exc.code, str(exc))
        except chunked.ChunkedError as exc:
            return self._error(request, "SignatureDoesNotMatch", str(exc))
        except Unavailable as exc:
            return self._error(request, "ServiceUnavailable", str(exc))
        except BodyTooLarge as exc:
            return self._error(request, "EntityTooLarge", exc.reason)
        except BodyTimeout as exc:
            return self._error(request, "RequestTimeout", exc.reason)
        except ClientDisconnect:
            # Nothing was committed (manifests are written last); nobody reads the answer.
            return Response(status_code=400, headers={"Connection": "close"})

    @staticmethod
    def _error(request: Request, code: str, message: str) -> Response:
        response = error_response(
            code, message, request.scope["path"], head=request.method == "HEAD"
        )
        if request.method in ("PUT", "POST"):
            # The body may be unread (a client waiting on Expect: 100-continue never sends
            # it): close, or its bytes would be parsed as the next request.
            response.headers["Connection"] = "close"
        return response

    def _authenticate(self, request: Request) -> sigv4.Verified:
        def secret_for(access_key: str) -> str:
            try:
                return self.keys.s3_secret(access_key)[1]
            except KeyRejected as exc:
                raise sigv4.SigError("InvalidAccessKeyId", str(exc)) from None

        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        return sigv4.verify_request(
            request.method,
            raw_path.decode("latin-1").split("?", 1)[0],
            request.scope.get("query_string", b"").decode("latin-1"),
            headers,
            secret_for,
            datetime.now(UTC),
            region=self.config.region,
            mount=PREFIX,
        )

    def _body(
        self, request: Request, verified: sigv4.Verified
    ) -> tuple[AsyncIterator[bytes], chunked.AwsChunkedDecoder | None]:
        """The request payload, aws-chunked decoded when the client streams it (SigV4
        streaming, signed chunks or unsigned with trailing checksums)."""
        # Whatever the body is (an object, a part, an XML request), the guard of the edge
        # already holds it to the largest object; callers bound it further.
        stream = stream_body(request, self.config.max_object + self.config.max_object // 50)
        if not verified.payload_hash.startswith("STREAMING-"):
            return stream, None
        signer: chunked.ChunkSigner | None = None
        if verified.payload_hash.startswith(sigv4.STREAMING_SIGNED):
            key, credential, amz_date = verified.key, verified.credential, verified.amz_date
            assert key is not None and credential is not None and amz_date is not None

            def signer(previous: str, digest: str) -> str:
                return sigv4.sign(
                    key, sigv4.chunk_string_to_sign(amz_date, credential, previous, digest)
                )

        decoder = chunked.AwsChunkedDecoder(signer, verified.seed_signature or "")

        async def decoded() -> AsyncIterator[bytes]:
            async for piece in stream:
                for data in decoder.feed(piece):
                    yield data
            decoder.finish()

        return decoded(), decoder

    async def _small_body(self, request: Request, verified: sigv4.Verified) -> bytes:
        body = bytearray()
        async for piece in self._body(request, verified)[0]:
            body += piece
            if len(body) > MAX_XML_BODY:
                raise S3Error("InvalidRequest", "request body too large")
        self._check_payload(verified, hashlib.sha256(body).hexdigest())
        return bytes(body)

    @staticmethod
    def _check_payload(verified: sigv4.Verified, sha256: str) -> None:
        expected = verified.payload_hash
        if expected == sigv4.UNSIGNED_PAYLOAD or expected.startswith("STREAMING-"):
            return
        if expected != sha256:
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "the body does not match x-amz-content-sha256",
            )

    # ---- buckets ------------------------------------------------------------------------

    async def list_buckets(self) -> Response:
        buckets = await self.cluster.list_manifests(NS_BUCKET, "", "")
        root = element("ListAllMyBucketsResult")
        owner = ET.SubElement(root, "Owner")
        ET.SubElement(owner, "ID").text = "meshcast"
        ET.SubElement(owner, "DisplayName").text = "meshcast"
        listing = ET.SubElement(root, "Buckets")
        for b in buckets:
            node = ET.SubElement(listing, "Bucket")
            ET.SubElement(node, "Name").text = b.key
            ET.SubElement(node, "CreationDate").text = iso(b.version / 1e9)
        return xml_response(root)

    def _bucket_probe(self, bucket: str) -> Manifest:
        return Manifest(NS_BUCKET, "", bucket, 0, "")

    async def _bucket_exists(self, bucket: str) -> bool:
        return await self.cluster.get_manifest(self._bucket_probe(bucket)) is not None

    async def _require_bucket(self, bucket: str) -> None:
        if not await self._bucket_exists(bucket):
            raise S3Error("NoSuchBucket", f"the bucket {bucket!r} does not exist")

    async def _bucket_op(
        self, request: Request, verified: sigv4.Verified, bucket: str, query: dict[str, str]
    ) -> Response:
        method = request.method
        if method == "PUT":
            await self._small_body(request, verified)
            if await self._bucket_exists(bucket):
                raise S3Error("BucketAlreadyOwnedByYou", f"the bucket {bucket!r} exists")
            await self._put_manifest(Manifest(NS_BUCKET, "", bucket, time.time_ns(), ""))
            return Response(status_code=200, headers={"Location": f"/{bucket}"})
        await self._require_bucket(bucket)
        if method == "HEAD":
            return Response(status_code=200)
        if method == "DELETE":
            if await self.cluster.list_manifests(NS_OBJECT, bucket, ""):
                raise S3Error("BucketNotEmpty", f"the bucket {bucket!r} is not empty")
            tombstone = Manifest(NS_BUCKET, "", bucket, time.time_ns(), "", deleted=True)
            await self._put_manifest(tombstone)
            return Response(status_code=204)
        if method == "POST" and "delete" in query:
            return await self._delete_objects(request, verified, bucket)
        if method == "GET":
            if "location" in query:
                root = element("LocationConstraint")
                return xml_response(root)
            if "uploads" in query or "versioning" in query or "acl" in query:
                raise S3Error("NotImplemented", "this bucket sub-resource is not supported")
            return await self._list_objects(bucket, query)
        raise S3Error("MethodNotAllowed", f"{method} on a bucket")

    async def _put_manifest(self, manifest: Manifest) -> None:
        manifest.writer = self.cluster.self_url
        await self.cluster.put_manifest(manifest)

    async def _list_objects(self, bucket: str, query: dict[str, str]) -> Response:
        params = parse_list_params(query)
        manifests = await self.cluster.list_manifests(NS_OBJECT, bucket, params.prefix)
        by_key = {m.key: m for m in manifests}
        page = list_page(sorted(by_key), params)

        def enc(value: str) -> str:
            return quote(value, safe="/") if params.encoding_url else value

        root = element("ListBucketResult")
        ET.SubElement(root, "Name").text = bucket
        ET.SubElement(root, "Prefix").text = enc(params.prefix)
        if params.delimiter:
            ET.SubElement(root, "Delimiter").text = enc(params.delimiter)
        ET.SubElement(root, "MaxKeys").text = str(params.max_keys)
        if params.encoding_url:
            ET.SubElement(root, "EncodingType").text = "url"
        ET.SubElement(root, "IsTruncated").text = "true" if page.truncated else "false"
        if params.v2:
            ET.SubElement(root, "KeyCount").text = str(len(page.keys) + len(page.prefixes))
            if params.continuation is not None:
                ET.SubElement(root, "ContinuationToken").text = params.continuation
            if params.start_after:
                ET.SubElement(root, "StartAfter").text = enc(params.start_after)
            if page.truncated:
                ET.SubElement(root, "NextContinuationToken").text = encode_token(page.last)
        else:
            ET.SubElement(root, "Marker").text = enc(params.marker)
            if page.truncated:
                ET.SubElement(root, "NextMarker").text = enc(page.last)
        for key in page.keys:
            m = by_key[key]
            node = ET.SubElement(root, "Contents")
            ET.SubElement(node, "Key").text = enc(key)
            ET.SubElement(node, "LastModified").text = iso(m.version / 1e9)
            ET.SubElement(node, "ETag").text = f'"{m.etag}"'
            ET.SubElement(node, "Size").text = str(m.size)
            ET.SubElement(node, "StorageClass").text = "STANDARD"
        for prefix in page.prefixes:
            node = ET.SubElement(root, "CommonPrefixes")
            ET.SubElement(node, "Prefix").text = enc(prefix)
        return xml_response(root)

    async def _delete_objects(
        self, request: Request, verified: sigv4.Verified, bucket: str
    ) -> Response:
        keys, quiet = parse_delete_keys(await self._small_body(request, verified))
        root = element("DeleteResult")
        for key in keys:
            await self._put_manifest(
                Manifest(NS_OBJECT, bucket, key, time.time_ns(), "", deleted=True)
            )
            if not quiet:
                ET.SubElement(ET.SubElement(root, "Deleted"), "Key").text = key
        return xml_response(root)

    # ---- objects ------------------------------------------------------------------------

    async def _object_op(
        self,
        request: Request,
        verified: sigv4.Verified,
        bucket: str,
        key: str,
        query: dict[str, str],
    ) -> Response:
        method = request.method
        await self._require_bucket(bucket)
        if method == "POST" and "uploads" in query:
            return await self._create_upload(request, bucket, key)
        if "uploadId" in query:
            upload_id = query["uploadId"]
            if method == "PUT" and "partNumber" in query:
                return await self._upload_part(request, verified, bucket, key, query)
            if method == "POST":
                return await self._complete_upload(request, verified, bucket, key, upload_id)
            if method == "DELETE":
                return await self._abort_upload(bucket, key, upload_id)
            raise S3Error("NotImplemented", "ListParts is not supported")
        if method == "PUT":
            if "x-amz-copy-source" in request.headers:
                return await self._copy_object(request, verified, bucket, key)
            return await self._put_object(request, verified, bucket, key)
        if method in ("GET", "HEAD"):
            return await self._get_object(request, bucket, key)
        if method == "DELETE":
            await self._put_manifest(
                Manifest(NS_OBJECT, bucket, key, time.time_ns(), "", deleted=True)
            )
            return Response(status_code=204)
        raise S3Error("MethodNotAllowed", f"{method} on an object")

    def _declared_length(self, request: Request, verified: sigv4.Verified) -> int | None:
        length = request.headers.get("x-amz-decoded-content-length")
        if length is None and not verified.payload_hash.startswith("STREAMING-"):
            length = request.headers.get("content-length")
        if length is None:
            return None
        if not length.isdigit():
            raise S3Error("InvalidArgument", "bad content length")
        if int(length) > self.config.max_object:
            raise S3Error("EntityTooLarge", f"objects are at most {self.config.max_object} bytes")
        return int(length)

    async def _receive(self, request: Request, verified: sigv4.Verified) -> Written:
        declared = self._declared_length(request, verified)
        body, decoder = self._body(request, verified)
        written = await write_chunks(
            self.cluster, body, self.config.chunk_size, self.config.max_object
        )
        if declared is not None and written.size != declared:
            raise S3Error("IncompleteBody", "the body is shorter than its declared length")
        self._check_payload(verified, written.sha256)
        self._check_digests(request.headers.get, written)
        if decoder is not None:
            self._check_digests(decoder.trailers.get, written)
        return written

    @staticmethod
    def _check_digests(header: Callable[[str], str | None], written: Written) -> None:
        """Content-MD5 and x-amz-checksum-crc32, from the headers or aws-chunked trailers."""
        md5 = header("content-md5")
        if md5 is not None:
            try:
                ok = base64.b64decode(md5, validate=True).hex() == written.md5
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise S3Error("BadDigest", "the Content-MD5 does not match the body")
        crc = header("x-amz-checksum-crc32")
        if crc is not None:
            ours = base64.b64encode(written.crc32.to_bytes(4, "big")).decode()
            if crc != ours:
                raise S3Error("BadDigest", "x-amz-checksum-crc32 does not match the body")

    @staticmethod
    def _user_meta(request: Request) -> dict[str, str]:
        return {
            name[len(_META_PREFIX) :]: value
            for name, value in request.headers.items()
            if name.startswith(_META_PREFIX)
        }

    async def _put_object(
        self, request: Request, verified: sigv4.Verified, bucket: str, key: str
    ) -> Response:
        written = await self._receive(request, verified)
        manifest = Manifest(
            NS_OBJECT,
            bucket,
            key,
            time.time_ns(),
            "",
            size=written.size,
            etag=written.md5,
            content_type=request.headers.get("content-type", "binary/octet-stream"),
            chunks=written.chunks,
            meta=self._user_meta(request),
            sha256=written.sha256,
        )
        await self._put_manifest(manifest)
        headers = {"ETag": f'"{written.md5}"'}
        if "x-amz-checksum-crc32" in request.headers:
            headers["x-amz-checksum-crc32"] = request.headers["x-amz-checksum-crc32"]
        return Response(status_code=200, headers=headers)

    async def _copy_object(
        self, request: Request, verified: sigv4.Verified, bucket: str, key: str
    ) -> Response:
        await self._small_body(request, verified)
        source = unquote(request.headers["x-amz-copy-source"]).lstrip("/")
        src_bucket, _, src_key = source.partition("/")
        src_key = src_key.split("?versionId=", 1)[0]
        found = await self._object(src_bucket, src_key)
        copy = Manifest.from_json(found.to_json())
        copy.bucket, copy.key, copy.version = bucket, key, time.time_ns()
        if request.headers.get("x-amz-metadata-directive") == "REPLACE":
            copy.meta = self._user_meta(request)
            copy.content_type = request.headers.get("content-type", copy.content_type)
        # Chunks are content-addressed: the copy shares them, no bytes move.
        await self._put_manifest(copy)
        root = element("CopyObjectResult", LastModified=iso(copy.version / 1e9))
        ET.SubElement(root, "ETag").text = f'"{copy.etag}"'
        return xml_response(root)

    async def _object(self, bucket: str, key: str) -> Manifest:
        found = await self.cluster.get_manifest(Manifest(NS_OBJECT, bucket, key, 0, ""))
        if found is None:
            raise S3Error("NoSuchKey", "The specified key does not exist.")
        return found

    async def _get_object(self, request: Request, bucket: str, key: str) -> Response:
        m = await self._object(bucket, key)
        last_modified = _http_date(m.version / 1e9)
        headers = {
            "ETag": f'"{m.etag}"',
            "Last-Modified": last_modified,
            "Content-Type": m.content_type,
            "Accept-Ranges": "bytes",
            **{f"{_META_PREFIX}{k}": v for k, v in m.meta.items()},
        }
        if not self._preconditions(request, m, headers):
            return Response(status_code=304, headers=headers)
        try:
            span = parse_range(request.headers.get("range"), m.size)
        except RangeNotSatisfiable:
            raise S3Error("InvalidRange", "The requested range is not satisfiable") from None
        start, end = span if span is not None else (0, m.size)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{m.size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        # Fail before the status line if the first chunk is unreachable; later chunks
        # failing can only cut the body short (the client sees a short read).
        body = self.cluster.read(m, start, end)
        first = b""
        if end > start:
            first = await anext(body)

        async def stream() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for piece in body:
                yield piece

        return StreamingResponse(stream(), status, headers=headers)

    @staticmethod
    def _preconditions(request: Request, m: Manifest, headers: dict[str, str]) -> bool:
        """False: answer 304; raises PreconditionFailed for If-Match/If-Unmodified-Since."""
        etag = f'"{m.etag}"'
        if_match = request.headers.get("if-match")
        if if_match is not None and if_match.strip() not in ("*", etag, m.etag):
            raise S3Error("PreconditionFailed", "If-Match does not match")
        if_none = request.headers.get("if-none-match")
        if if_none is not None:
            return if_none.strip() not in ("*", etag, m.etag)
        since = request.headers.get("if-modified-since")
        if since is not None:
            try:
                if m.version / 1e9 < parsedate_to_datetime(since).timestamp() + 1:
                    return False
            except (TypeError, ValueError):
                pass
        return True

    # ---- multipart ----------------------------------------------------------------------

    async def _create_upload(self, request: Request, bucket: str, key: str) -> Response:
        upload_id = secrets.token_hex(16)
        path = self.store.upload_path(upload_id)
        meta = {
            "bucket": bucket,
            "key": key,
            "content_type": request.headers.get("content-type", "binary/octet-stream"),
            "meta": self._user_meta(request),
            "created": time.time(),
        }
        await asyncio.to_thread(self.store.write_json, path / "upload.json", meta)
        root = element("InitiateMultipartUploadResult", Bucket=bucket, Key=key)
        ET.SubElement(root, "UploadId").text = upload_id
        return xml_response(root)

    async def _upload_meta(self, bucket: str, key: str, upload_id: str) -> dict[str, Any]:
        try:
            path = self.store.upload_path(upload_id) / "upload.json"
            meta: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_bytes))
        except (ValueError, FileNotFoundError):
            raise S3Error(
                "NoSuchUpload",
                "the upload does not exist (uploads live on the edge that created them)",
            ) from None
        if meta["bucket"] != bucket or meta["key"] != key:
            raise S3Error("NoSuchUpload", "the upload belongs to another object")
        return meta

    async def _upload_part(
        self,
        request: Request,
        verified: sigv4.Verified,
        bucket: str,
        key: str,
        query: dict[str, str],
    ) -> Response:
        upload_id = query["uploadId"]
        await self._upload_meta(bucket, key, upload_id)
        number_text = query["partNumber"]
        if not number_text.isdigit() or not 1 <= int(number_text) <= MAX_PARTS:
            raise S3Error("InvalidArgument", "partNumber must be 1-10000")
        written = await self._receive(request, verified)
        part = {"chunks": written.chunks, "size": written.size, "md5": written.md5}
        path = self.store.upload_path(upload_id) / f"part-{int(number_text)}.json"
        await asyncio.to_thread(self.store.write_json, path, part)
        return Response(status_code=200, headers={"ETag": f'"{written.md5}"'})

    async def _complete_upload(
        self, request: Request, verified: sigv4.Verified, bucket: str, key: str, upload_id: str
    ) -> Response:
        meta = await self._upload_meta(bucket, key, upload_id)
        requested = parse_complete_parts(await self._small_body(request, verified))
        numbers = [n for n, _ in requested]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "parts must be listed in ascending order")
        directory = self.store.upload_path(upload_id)
        chunks: list[tuple[str, int]] = []
        md5s: list[str] = []
        size = 0
        for index, (number, etag) in enumerate(requested):
            try:
                raw = await asyncio.to_thread((directory / f"part-{number}.json").read_bytes)
            except FileNotFoundError:
                raise S3Error("InvalidPart", f"part {number} was not uploaded") from None
            part = json.loads(raw)
            if part["md5"] != etag:
                raise S3Error("InvalidPart", f"part {number}'s ETag does not match")
            if part["size"] < MIN_PART and index != len(requested) - 1:
                raise S3Error("EntityTooSmall", "every part but the last must be >= 5 MiB")
            chunks += [(str(h), int(n)) for h, n in part["chunks"]]
            md5s.append(part["md5"])
            size += part["size"]
        etag = multipart_etag(md5s)
        await self._put_manifest(
            Manifest(
                NS_OBJECT,
                bucket,
                key,
                time.time_ns(),
                "",
                size=size,
                etag=etag,
                content_type=meta["content_type"],
                chunks=chunks,
                meta=meta["meta"],
            )
        )
        await asyncio.to_thread(shutil.rmtree, directory, True)
        root = element(
            "CompleteMultipartUploadResult",
            Location=f"{PREFIX}/{bucket}/{quote(key)}",
            Bucket=bucket,
            Key=key,
        )
        ET.SubElement(root, "ETag").text = f'"{etag}"'
        return xml_response(root)

    async def _abort_upload(self, bucket: str, key: str, upload_id: str) -> Response:
        await self._upload_meta(bucket, key, upload_id)
        # The parts' chunks go at the next garbage collection (Cluster.gc_once).
        await asyncio.to_thread(shutil.rmtree, self.store.upload_path(upload_id), True)
        return Response(status_code=204)
