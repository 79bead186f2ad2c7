"""Storage plugin end to end: boto3 (unchanged, path-style) against a ring of real edges,
replication and repair, corruption, pinning checked with the multiformats library."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from multiformats import CID, multihash

from edge.plugins.storage import StoragePlugin, chunked
from edge.plugins.storage.cluster import ChunkCache
from edge.service import EdgeService
from meshcast import sigv4
from meshcast.config import EdgeConfig, OriginConfig, StorageConfig, TranscodeConfig
from meshcast.keys import S3_KIND, KeyStore
from meshcast.s3store import S3Location, S3Store, S3StoreError
from meshcast.store import open_store
from origin.service import OriginService
from tests.conftest import free_port, rtmp_url, wait_for_state
from tests.e2e.test_ladder import wait_for_url
from tests.e2e.test_rtmp_ingest import ffmpeg_push
from tests.e2e.test_vod import make_clip, upload, wait_job

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@dataclass
class Ring:
    edges: list[EdgeService]
    keys: KeyStore
    access_key: str
    secret: str
    data: Path

    def plugin(self, index: int) -> StoragePlugin:
        plugin = self.edges[index].edge.plugins[0]
        assert isinstance(plugin, StoragePlugin)
        return plugin

    def client(self, index: int = 0, **config: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"{self.edges[index].url}/s3",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config
            ),
        )


async def start_ring(tmp_path: Path, count: int, **storage: Any) -> Ring:
    data = tmp_path / "data"
    keys = KeyStore(data)
    access_key, secret = keys.create("tester", S3_KIND).split(" ")
    ports = [free_port() for _ in range(count)]
    settings = StorageConfig(**{"chunk_size": 256 * 1024, "repair_interval": 0.3, **storage})
    edges = [
        EdgeService(
            EdgeConfig(
                origin="http://127.0.0.1:9",  # storage never asks the origin
                port=port,
                peers=tuple(f"http://127.0.0.1:{p}" for p in ports if p != port),
                cache_dir=tmp_path / f"edge-{port}",
                plugins=("storage",),
                data_dir=data,
                storage=settings,
            )
        )
        for port in ports
    ]
    for edge in edges:
        await edge.start()
    return Ring(edges, keys, access_key, secret, data)


@pytest.fixture
async def ring(tmp_path: Path) -> AsyncIterator[Ring]:
    r = await start_ring(tmp_path, 2)
    try:
        yield r
    finally:
        for edge in r.edges:
            await edge.close()


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """boto3 blocks: run it off the loop that serves the edges."""
    return asyncio.to_thread(fn, *args, **kwargs)


async def get_body(client: Any, **params: Any) -> tuple[dict[str, Any], bytes]:
    """get_object and read its body, both off the loop (the body streams from the edge)."""

    def run() -> tuple[dict[str, Any], bytes]:
        response = client.get_object(**params)
        return response, response["Body"].read()

    return await asyncio.to_thread(run)


def error_code(exc: ClientError) -> str:
    code: str = exc.response["Error"]["Code"]
    return code


async def test_boto3_put_get_head_list_delete(ring: Ring) -> None:
    s3a, s3b = ring.client(0), ring.client(1)
    await call(s3a.create_bucket, Bucket="media")
    with pytest.raises(ClientError) as exc:
        await call(s3a.create_bucket, Bucket="media")
    assert error_code(exc.value) == "BucketAlreadyOwnedByYou"
    assert [b["Name"] for b in (await call(s3b.list_buckets))["Buckets"]] == ["media"]

    body = os.urandom(700 * 1024)  # three chunks of 256 KiB
    key = "dir/ünïcødé key+&=?%.bin"
    put = await call(
        s3a.put_object,
        Bucket="media",
        Key=key,
        Body=body,
        ContentType="video/mp4",
        Metadata={"owner": "alice"},
    )
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got, data = await get_body(s3b, Bucket="media", Key=key)  # written via A, read via B
    assert data == body
    assert got["ETag"] == put["ETag"] and got["ContentType"] == "video/mp4"
    assert got["Metadata"] == {"owner": "alice"}
    head = await call(s3b.head_object, Bucket="media", Key=key)
    assert head["ContentLength"] == len(body)
    ranged, data = await get_body(s3a, Bucket="media", Key=key, Range="bytes=262000-262999")
    assert data == body[262000:263000]
    assert ranged["ContentRange"] == f"bytes 262000-262999/{len(body)}"

    for name in ("a/1", "a/2", "a/b/3", "b/4", "c", "d"):
        await call(s3a.put_object, Bucket="media", Key=name, Body=name.encode())
    listing = await call(s3b.list_objects_v2, Bucket="media", Delimiter="/")
    assert [c["Key"] for c in listing["Contents"]] == ["c", "d"]
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["a/", "b/", "dir/"]
    under_a = await call(s3b.list_objects_v2, Bucket="media", Prefix="a/")
    assert [c["Key"] for c in under_a["Contents"]] == ["a/1", "a/2", "a/b/3"]
    pages = s3a.get_paginator("list_objects_v2").paginate(
        Bucket="media", PaginationConfig={"PageSize": 2}
    )
    page_list = await call(list, pages)
    assert len(page_list) == 4
    keys = [c["Key"] for page in page_list for c in page.get("Contents", [])]
    assert keys == sorted(["a/1", "a/2", "a/b/3", "b/4", "c", "d", key])

    await call(s3b.delete_object, Bucket="media", Key=key)
    with pytest.raises(ClientError) as exc:
        await call(s3a.get_object, Bucket="media", Key=key)
    assert error_code(exc.value) == "NoSuchKey"
    with pytest.raises(ClientError) as exc:
        await call(s3a.head_object, Bucket="media", Key=key)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        await call(s3a.delete_bucket, Bucket="media")
    assert error_code(exc.value) == "BucketNotEmpty"
    deleted = await call(
        s3a.delete_objects,
        Bucket="media",
        Delete={"Objects": [{"Key": k} for k in ("a/1", "a/2", "a/b/3", "b/4", "c", "d")]},
    )
    assert len(deleted["Deleted"]) == 6
    await call(s3a.delete_bucket, Bucket="media")
    with pytest.raises(ClientError) as exc:
        await call(s3b.put_object, Bucket="media", Key="x", Body=b"x")
    assert error_code(exc.value) == "NoSuchBucket"


async def test_boto3_multipart_upload_and_abort(ring: Ring, tmp_path: Path) -> None:
    s3 = ring.client(0)
    await call(s3.create_bucket, Bucket="big")
    body = os.urandom(11 * MiB)
    source = tmp_path / "big.bin"
    source.write_bytes(body)
    transfer = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    await call(s3.upload_file, str(source), "big", "movie.mp4", Config=transfer)
    head = await call(ring.client(1).head_object, Bucket="big", Key="movie.mp4")
    assert head["ContentLength"] == len(body) and head["ETag"].endswith('-3"')
    md5s = b"".join(
        hashlib.md5(body[i : i + 5 * MiB]).digest() for i in range(0, len(body), 5 * MiB)
    )
    assert head["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-3"'
    target = tmp_path / "back.bin"
    await call(ring.client(1).download_file, "big", "movie.mp4", str(target))
    assert target.read_bytes() == body

    upload = await call(s3.create_multipart_upload, Bucket="big", Key="aborted")
    part = await call(
        s3.upload_part,
        Bucket="big",
        Key="aborted",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"x" * 1000,
    )
    with pytest.raises(ClientError) as exc:
        await call(
            s3.complete_multipart_upload,
            Bucket="big",
            Key="aborted",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]},
        )
    assert error_code(exc.value) == "InvalidPart"
    assert part["ETag"] == f'"{hashlib.md5(b"x" * 1000).hexdigest()}"'
    await call(s3.abort_multipart_upload, Bucket="big", Key="aborted", UploadId=upload["UploadId"])
    with pytest.raises(ClientError) as exc:
        await call(
            s3.upload_part,
            Bucket="big",
            Key="aborted",
            UploadId=upload["UploadId"],
            PartNumber=2,
            Body=b"y",
        )
    assert error_code(exc.value) == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        await call(s3.get_object, Bucket="big", Key="aborted")
    assert error_code(exc.value) == "NoSuchKey"


def xml_error(response: httpx.Response) -> dict[str, str]:
    root = ET.fromstring(response.content)
    assert root.tag == "Error"
    fields = {child.tag: child.text or "" for child in root}
    assert set(fields) == {"Code", "Message", "Resource", "RequestId"}
    return fields


async def test_presigned_urls_v2_and_v4(ring: Ring) -> None:
    s3 = ring.client(0)
    await call(s3.create_bucket, Bucket="share")
    await call(s3.put_object, Bucket="share", Key="clip one.mp4", Body=b"clip bytes")
    v4 = ring.client(1, signature_version="s3v4")
    async with httpx.AsyncClient() as http:
        for client in (s3, v4):  # boto3's default presigner is SigV2; s3v4 on request
            url = client.generate_presigned_url(
                "get_object", Params={"Bucket": "share", "Key": "clip one.mp4"}, ExpiresIn=60
            )
            ok = await http.get(url)
            assert ok.status_code == 200 and ok.content == b"clip bytes"
            tampered = await http.get(url.replace("clip%20one", "clip%20two"))
            assert tampered.status_code == 403
            assert xml_error(tampered)["Code"] == "SignatureDoesNotMatch"
        put_url = v4.generate_presigned_url(
            "put_object", Params={"Bucket": "share", "Key": "up.txt"}, ExpiresIn=60
        )
        assert (await http.put(put_url, content=b"uploaded")).status_code == 200
        _, data = await get_body(s3, Bucket="share", Key="up.txt")
        assert data == b"uploaded"
        short = v4.generate_presigned_url(
            "get_object", Params={"Bucket": "share", "Key": "up.txt"}, ExpiresIn=1
        )
        await asyncio.sleep(2.1)
        expired = await http.get(short)
        assert expired.status_code == 403
        assert xml_error(expired) | {"RequestId": ""} == {
            "Code": "AccessDenied",
            "Message": "Request has expired",
            "Resource": "/s3/share/up.txt",
            "RequestId": "",
        }


async def test_sigv4_failures_are_rejected(ring: Ring) -> None:
    good = ring.client(0)
    await call(good.create_bucket, Bucket="locked")
    wrong = boto3.client(
        "s3",
        endpoint_url=f"{ring.edges[0].url}/s3",
        aws_access_key_id=ring.access_key,
        aws_secret_access_key=ring.secret + "x",
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as exc:
        await call(wrong.put_object, Bucket="locked", Key="k", Body=b"v")
    assert error_code(exc.value) == "SignatureDoesNotMatch"
    unknown = boto3.client(
        "s3",
        endpoint_url=f"{ring.edges[0].url}/s3",
        aws_access_key_id="MCUNKNOWN00000000000",
        aws_secret_access_key=ring.secret,
        region_name="us-east-1",
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError) as exc:
        await call(unknown.list_buckets)
    assert error_code(exc.value) == "InvalidAccessKeyId"
    async with httpx.AsyncClient() as http:
        anonymous = await http.get(f"{ring.edges[1].url}/s3/locked/k")
        assert anonymous.status_code == 403 and xml_error(anonymous)["Code"] == "AccessDenied"
        # A valid signature over one body, sent with another: the payload hash catches it.
        host = ring.edges[0].url.removeprefix("http://")
        signed = sigv4.sign_headers(
            "PUT",
            "/s3/locked/k",
            "",
            {"host": host},
            ring.access_key,
            ring.secret,
            hashlib.sha256(b"honest").hexdigest(),
            datetime.now(UTC),
        )
        swapped = await http.put(
            f"{ring.edges[0].url}/s3/locked/k", content=b"evil!!", headers=signed
        )
        assert swapped.status_code == 400
        assert xml_error(swapped)["Code"] == "XAmzContentSHA256Mismatch"
        honest = await http.put(
            f"{ring.edges[0].url}/s3/locked/k", content=b"honest", headers=signed
        )
        assert honest.status_code == 200
    with pytest.raises(ClientError) as exc:
        await call(good.get_object, Bucket="locked", Key="k", IfMatch='"nope"')
    assert error_code(exc.value) == "PreconditionFailed"
    ring.keys.revoke("tester")
    with pytest.raises(ClientError) as exc:
        await call(good.get_object, Bucket="locked", Key="k")
    assert error_code(exc.value) == "InvalidAccessKeyId"


def chunk_holders(ring: Ring, digest: str, alive: list[int]) -> int:
    return sum(ring.plugin(i).store.chunk_path(digest).exists() for i in alive)


async def test_killing_an_edge_keeps_objects_and_repair_restores_k(tmp_path: Path) -> None:
    ring = await start_ring(tmp_path, 3)
    try:
        s3 = ring.client(0)
        await call(s3.create_bucket, Bucket="durable")
        bodies = {f"obj{i}": os.urandom(300 * 1024 + i) for i in range(8)}
        for key, body in bodies.items():
            await call(s3.put_object, Bucket="durable", Key=key, Body=body)
        digests = {
            d for i in range(3) for d in ring.plugin(i).store.chunks
        }  # every chunk, wherever it is
        assert len(digests) == 16
        for digest in digests:
            assert chunk_holders(ring, digest, [0, 1, 2]) == 2  # k = 2, no more, no less

        victim = 2
        lost = {d for d in digests if ring.plugin(victim).store.has_chunk(d)}
        assert lost, "rendezvous hashing put nothing on the victim: test would prove nothing"
        await ring.edges[victim].close()
        for reader in (0, 1):
            client = ring.client(reader)
            for key, body in bodies.items():
                _, data = await get_body(client, Bucket="durable", Key=key)
                assert data == body
            listed = await call(client.list_objects_v2, Bucket="durable")
            assert [c["Key"] for c in listed["Contents"]] == sorted(bodies)

        deadline = asyncio.get_running_loop().time() + 20
        while True:
            counts = [chunk_holders(ring, d, [0, 1]) for d in digests]
            manifests = [set(ring.plugin(i).store.manifests) for i in (0, 1)]
            # Every chunk and every manifest (8 objects + the bucket) on both survivors.
            if all(c == 2 for c in counts) and all(len(m) == 1 + len(bodies) for m in manifests):
                break
            assert asyncio.get_running_loop().time() < deadline, f"not repaired: {counts}"
            await asyncio.sleep(0.2)
        # Manifests move only by the repair loop (reads repair chunks they touch, not
        # manifests): the loop did run and pushed.
        pushed = 0.0
        async with httpx.AsyncClient() as http:
            for edge in ring.edges[:2]:
                text = (await http.get(f"{edge.url}/metrics")).text
                for line in text.splitlines():
                    if line.startswith('meshcast_storage_repair_pushes_total{kind="manifest"}'):
                        pushed += float(line.split()[-1])
        assert pushed > 0
    finally:
        for edge in ring.edges[:2]:
            await edge.close()


def flip_byte(path: Path, offset: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_flipped_byte_is_detected_and_repaired(ring: Ring) -> None:
    s3 = ring.client(0)
    await call(s3.create_bucket, Bucket="rot")
    body = os.urandom(600 * 1024)
    await call(s3.put_object, Bucket="rot", Key="victim", Body=body)
    store = ring.plugin(0).store
    digests = [d for d, _ in store.get_manifest_by_key("s3", "rot", "victim").chunks]
    assert len(digests) == 3
    flip_byte(store.chunk_path(digests[0]))
    _, data = await get_body(s3, Bucket="rot", Key="victim")
    assert data == body  # detected, served from the peer's replica
    repaired = store.chunk_path(digests[0]).read_bytes()
    assert hashlib.sha256(repaired).hexdigest() == digests[0]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{ring.edges[0].url}/metrics")).text
    assert "meshcast_storage_corrupt_chunks_total 1.0" in metrics

    # The scrubber finds rot nobody read yet, and repairs it from the peer.
    flip_byte(store.chunk_path(digests[1]), 5)
    bad = await ring.plugin(0).cluster.scrub_once()
    assert bad == [digests[1]]
    fixed = store.chunk_path(digests[1]).read_bytes()
    assert hashlib.sha256(fixed).hexdigest() == digests[1]

    # The reads above left verified copies in edge 0's chunk cache; drop them so the disk
    # is read again.
    ring.plugin(0).cluster.chunk_cache = ChunkCache(0)
    # Every replica corrupted: never served. The first chunk is checked before the status
    # line (a clean 503); a later one can only cut the body short, which the client sees.
    for i in (0, 1):
        flip_byte(ring.plugin(i).store.chunk_path(digests[0]), 7)
    with pytest.raises(ClientError) as exc:
        await call(s3.get_object, Bucket="rot", Key="victim")
    assert error_code(exc.value) == "ServiceUnavailable"
    for i in (0, 1):
        flip_byte(ring.plugin(i).store.chunk_path(digests[2]), 7)
    with pytest.raises(botocore.exceptions.BotoCoreError):
        await get_body(s3, Bucket="rot", Key="victim", Range="bytes=262144-")


async def test_pinning_cids_match_multiformats(ring: Ring, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {ring.access_key}:{ring.secret}"}
    content = os.urandom(400 * 1024)
    expected = str(CID("base32", 1, "raw", multihash.digest(content, "sha2-256")))
    source = tmp_path / "file.bin"
    source.write_bytes(content)
    curl = shutil.which("curl")
    assert curl, "curl is needed (Debian package curl)"
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-sS",
        "--fail-with-body",
        "-X",
        "POST",
        "--data-binary",
        f"@{source}",
        "-H",
        "Content-Type: application/octet-stream",
        "-H",
        f"Authorization: {auth['Authorization']}",
        f"{ring.edges[0].url}/api/pins?name=file.bin",
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stdout
    pin = json.loads(stdout)
    assert pin["cid"] == expected and pin["size"] == len(content)
    async with httpx.AsyncClient() as http:
        first = await http.get(f"{ring.edges[1].url}/ipfs/{expected}")
        assert first.status_code == 200 and first.content == content
        assert first.headers["x-cache"] == "MISS"
        assert "immutable" in first.headers["cache-control"]
        again = await http.get(f"{ring.edges[1].url}/ipfs/{expected}")
        assert again.headers["x-cache"] == "HIT" and again.content == content
        part = await http.get(
            f"{ring.edges[0].url}/ipfs/{expected}", headers={"Range": "bytes=5-9"}
        )
        assert part.status_code == 206 and part.content == content[5:10]

        # A multipart form upload (what `curl -F file=@x` sends), larger than one chunk.
        form_content = os.urandom(300 * 1024)
        form_cid = str(CID("base32", 1, "raw", multihash.digest(form_content, "sha2-256")))
        by_form = await http.post(
            f"{ring.edges[1].url}/api/pins",
            files={"file": ("clip.mp4", form_content, "video/mp4")},
            headers=auth,
        )
        assert by_form.status_code == 201, by_form.text
        assert by_form.json()["cid"] == form_cid and by_form.json()["name"] == "clip.mp4"
        served = await http.get(f"{ring.edges[0].url}/ipfs/{form_cid}")
        assert served.content == form_content and served.headers["content-type"] == "video/mp4"

        # Pin an existing S3 object (multipart-free and multipart alike): same CID rule.
        s3 = ring.client(1)
        await call(s3.create_bucket, Bucket="pins")
        await call(s3.put_object, Bucket="pins", Key="doc.txt", Body=b"hello ipfs")
        by_ref = await http.post(
            f"{ring.edges[0].url}/api/pins", json={"bucket": "pins", "key": "doc.txt"}, headers=auth
        )
        assert by_ref.status_code == 201
        doc_cid = str(CID("base32", 1, "raw", multihash.digest(b"hello ipfs", "sha2-256")))
        assert by_ref.json()["cid"] == doc_cid
        listed = (await http.get(f"{ring.edges[1].url}/api/pins")).json()["pins"]
        assert sorted(p["cid"] for p in listed) == sorted([expected, doc_cid, form_cid])

        assert (await http.post(f"{ring.edges[0].url}/api/pins", content=b"x")).status_code == 401
        assert (await http.get(f"{ring.edges[0].url}/ipfs/bafyfake")).status_code == 400
        other = str(CID("base32", 1, "raw", multihash.digest(b"never pinned", "sha2-256")))
        assert (await http.get(f"{ring.edges[0].url}/ipfs/{other}")).status_code == 404

        # A replica rotting on disk is never served through /ipfs either.
        store = ring.plugin(0).store
        for digest, _ in store.get_manifest_by_key("pin", "", doc_cid).chunks:
            flip_byte(store.chunk_path(digest), 0)
        served = await http.get(f"{ring.edges[0].url}/ipfs/{doc_cid}")
        assert served.status_code == 200 and served.content == b"hello ipfs"

        gone = await http.delete(f"{ring.edges[0].url}/api/pins/{doc_cid}", headers=auth)
        assert gone.status_code == 204
        assert (await http.get(f"{ring.edges[1].url}/api/pins/{doc_cid}")).status_code == 404
        listed = (await http.get(f"{ring.edges[0].url}/api/pins")).json()["pins"]
        assert sorted(p["cid"] for p in listed) == sorted([expected, form_cid])


async def test_aws_chunked_streaming_uploads(ring: Ring) -> None:
    """SigV4 streaming bodies (what SDKs send over TLS): signed chunks, and unsigned chunks
    with a trailing CRC32; a tampered chunk or checksum is refused."""
    s3 = ring.client(0)
    await call(s3.create_bucket, Bucket="stream")
    host = ring.edges[0].url.removeprefix("http://")
    payload = os.urandom(200_000)
    now = datetime.now(UTC)

    def signed_body(signature: str, data: bytes) -> bytes:
        credential = sigv4.Credential(ring.access_key, now.strftime("%Y%m%d"), "us-east-1", "s3")
        key = sigv4.signing_key(ring.secret, credential)
        date = now.strftime(sigv4.AMZ_DATE_FORMAT)
        out, previous = bytearray(), signature
        for piece in [data[i : i + 65536] for i in range(0, len(data), 65536)] + [b""]:
            digest = hashlib.sha256(piece).hexdigest()
            sig = sigv4.sign(key, sigv4.chunk_string_to_sign(date, credential, previous, digest))
            out += f"{len(piece):x};chunk-signature={sig}\r\n".encode() + piece + b"\r\n"
            previous = sig
        return bytes(out)

    def headers(marker: str, extra: dict[str, str]) -> dict[str, str]:
        base = {"host": host, "content-encoding": "aws-chunked", **extra}
        base["x-amz-decoded-content-length"] = str(len(payload))
        signed = sigv4.sign_headers(
            "PUT", "/s3/stream/obj", "", base, ring.access_key, ring.secret, marker, now
        )
        return {**base, **signed}

    async with httpx.AsyncClient() as http:
        h = headers(sigv4.STREAMING_SIGNED, {})
        seed = h["authorization"].rsplit("Signature=", 1)[1]
        url = f"{ring.edges[0].url}/s3/stream/obj"
        ok = await http.put(url, content=signed_body(seed, payload), headers=h)
        assert ok.status_code == 200, ok.text
        assert ok.headers["etag"] == f'"{hashlib.md5(payload).hexdigest()}"'
        _, data = await get_body(ring.client(1), Bucket="stream", Key="obj")
        assert data == payload
        forged = signed_body(seed, payload).replace(payload[:100], bytes(100), 1)
        bad = await http.put(url, content=forged, headers=h)
        assert bad.status_code == 403 and xml_error(bad)["Code"] == "SignatureDoesNotMatch"

        crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
        h = headers(sigv4.STREAMING_UNSIGNED_TRAILER, {"x-amz-trailer": "x-amz-checksum-crc32"})
        body = chunked.encode(payload, 8192, {"x-amz-checksum-crc32": crc})
        assert (await http.put(url, content=body, headers=h)).status_code == 200
        wrong = chunked.encode(payload, 8192, {"x-amz-checksum-crc32": "AAAAAA=="})
        refused = await http.put(url, content=wrong, headers=h)
        assert refused.status_code == 400 and xml_error(refused)["Code"] == "BadDigest"


async def test_segment_store_on_the_edges_s3(ring: Ring, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transcoder's SegmentStore backed by our own S3 API (any S3 works the same)."""
    s3 = ring.client(1)
    await call(s3.create_bucket, Bucket="segments")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ring.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ring.secret)
    spec = f"s3://segments/origin-a?endpoint={ring.edges[0].url}/s3"
    store = open_store(spec, Path("unused"))
    assert isinstance(store, S3Store)
    segment = os.urandom(300_000)

    def write() -> None:
        store.put("live/cam/360p/init.mp4", b"init")
        store.put("live/cam/360p/1.m4s", segment)
        store.put("live/cam/360p/index.m3u8", "#EXTM3U\n")
        store.put("live/other/360p/1.m4s", b"keep me")
        store.put("live/cam/360p/1.m4s", segment[::-1])  # overwrite: last writer wins

    await asyncio.to_thread(write)
    head = await call(s3.head_object, Bucket="segments", Key="origin-a/live/cam/360p/1.m4s")
    assert head["ContentType"] == "video/iso.segment"
    _, data = await get_body(s3, Bucket="segments", Key="origin-a/live/cam/360p/1.m4s")
    assert data == segment[::-1]
    assert await asyncio.to_thread(store.get, "live/cam/360p/index.m3u8") == b"#EXTM3U\n"
    await asyncio.to_thread(store.delete, "live/cam/360p/init.mp4")
    assert await asyncio.to_thread(store.get, "live/cam/360p/init.mp4") is None
    await asyncio.to_thread(store.clear, "live/cam")
    listed = await call(s3.list_objects_v2, Bucket="segments")
    assert [c["Key"] for c in listed["Contents"]] == ["origin-a/live/other/360p/1.m4s"]
    store.close()
    bad = S3Store(S3Location.parse(spec), ring.access_key, "wrong-secret")
    with pytest.raises(S3StoreError, match="403 SignatureDoesNotMatch"):
        await asyncio.to_thread(bad.put, "x", b"y")
    bad.close()


def test_meshcast_up_with_storage_plugin_and_cli_keys(tmp_path: Path) -> None:
    """The contract as users run it: `meshcast up --plugin storage`, a key from `meshcast
    keys create --kind s3` made after start-up, boto3 against both edges."""
    meshcast = [sys.executable, "-m", "meshcast.cli"]
    http_port, rtmp_port = free_port(), free_port()
    ports = ["--http-port", str(http_port), "--rtmp-port", str(rtmp_port)]
    setup = ["--edges", "2", "--plugin", "storage", "--network"]
    proc = subprocess.Popen(
        [*meshcast, "up", "--data", str(tmp_path), *ports, *setup],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.stdout.readline().strip() != "ready":
            pass
        created = subprocess.run(
            [*meshcast, "keys", "create", "s3user", "--kind", "s3", "--data", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        access_key, secret = created.stdout.split(" ")
        secret = secret.rstrip("\n")
        assert created.stdout == f"{access_key} {secret}\n"
        clients = [
            boto3.client(
                "s3",
                endpoint_url=f"http://127.0.0.1:{http_port + i}/s3",
                aws_access_key_id=access_key,
                aws_secret_access_key=secret,
                region_name="us-east-1",
                config=botocore.config.Config(s3={"addressing_style": "path"}),
            )
            for i in (1, 2)
        ]
        clients[0].create_bucket(Bucket="cli")
        clients[0].put_object(Bucket="cli", Key="hello.txt", Body=b"hello from the CLI")
        got = clients[1].get_object(Bucket="cli", Key="hello.txt")["Body"].read()
        assert got == b"hello from the CLI"
        url = clients[1].generate_presigned_url(
            "get_object", Params={"Bucket": "cli", "Key": "hello.txt"}, ExpiresIn=60
        )
        assert httpx.get(url).content == b"hello from the CLI"
        # --network: both edges joined the origin's contributor network, and their signed
        # receipts commit to the chunks they store (what storage challenges check).
        origin = f"http://127.0.0.1:{http_port}"
        nodes = httpx.get(f"{origin}/api/nodes").json()["nodes"]
        assert len(nodes) == 2 and all(n["live"] for n in nodes)
        assert all(n["capacity"]["plugins"] == ["storage"] for n in nodes)
        deadline = time.monotonic() + 30
        stored: list[int] = []
        while time.monotonic() < deadline:
            status = [httpx.get(f"{origin}/api/nodes/{n['node']}").json() for n in nodes]
            stored = [(s["storage"] or {}).get("commitment", {}).get("bytes", 0) for s in status]
            if all(stored):
                break
            time.sleep(0.5)
        assert stored == [len(b"hello from the CLI")] * 2  # k=2: both hold the one chunk
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


async def test_live_and_vod_segments_on_the_edges_s3_store(
    tmp_path: Path, ffmpeg_cli: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--store s3://…`: the transcoder writes the live ladder into the edges' own S3 API,
    the origin reads it back from there (nothing under DATA/live), edges serve it."""
    origin_port = free_port()
    ring = await start_ring(tmp_path, 2)
    for edge in ring.edges:  # the ring's edges pull media from the origin started below
        edge.edge.origin = f"http://127.0.0.1:{origin_port}"
    origin: OriginService | None = None
    try:
        s3 = ring.client(0)
        await call(s3.create_bucket, Bucket="live-media")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ring.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ring.secret)
        spec = f"s3://live-media/origin-1?endpoint={ring.edges[0].url}/s3"
        origin = OriginService(
            OriginConfig(
                data_dir=tmp_path / "origin",
                http_port=origin_port,
                rtmp_port=0,
                transcode=TranscodeConfig(ladder=((360, 800),), segment_store=spec),
            )
        )
        await origin.start()
        key = origin.keys.create("cam")
        proc = await ffmpeg_push(ffmpeg_cli, rtmp_url(origin, key), 3.0)
        await asyncio.wait_for(proc.communicate(), 60)
        await wait_for_state(origin, "cam", "ended")
        playlist = (
            await wait_for_url(f"{origin.url}/live/cam/360p/index.m3u8", 60, "ENDLIST")
        ).text
        segments = re.findall(r"^(\d+\.m4s)$", playlist, re.M)
        assert segments
        listed = await call(s3.list_objects_v2, Bucket="live-media", Prefix="origin-1/live/cam/")
        stored = {c["Key"] for c in listed["Contents"]}
        assert f"origin-1/live/cam/360p/{segments[0]}" in stored
        assert "origin-1/live/cam/master.m3u8" in stored
        assert not list((tmp_path / "origin").glob("live/**/*.m4s"))
        async with httpx.AsyncClient() as http:
            via_edge = await http.get(f"{ring.edges[1].url}/live/cam/360p/{segments[0]}")
        _, direct = await get_body(
            s3, Bucket="live-media", Key=f"origin-1/live/cam/360p/{segments[0]}"
        )
        assert via_edge.status_code == 200 and via_edge.content == direct
        assert via_edge.headers["content-type"] == "video/iso.segment"
        # VOD output goes to the same store and is served from it.
        clip = await make_clip(tmp_path / "clip.mp4", 2)
        asset = await upload(origin, key, clip.read_bytes())
        assert (await wait_job(origin, asset))["state"] == "ready"
        listed = await call(
            s3.list_objects_v2, Bucket="live-media", Prefix=f"origin-1/vod/{asset}/"
        )
        stored = {c["Key"] for c in listed["Contents"]}
        assert f"origin-1/vod/{asset}/master.m3u8" in stored
        assert f"origin-1/vod/{asset}/240p/0.m4s" in stored
        assert not list((tmp_path / "origin").glob("vod/**/*.m4s"))
        async with httpx.AsyncClient() as http:
            master = await http.get(f"{origin.url}/vod/{asset}/master.m3u8")
            via_edge = await http.get(f"{ring.edges[1].url}/vod/{asset}/240p/0.m4s")
        assert master.status_code == 200 and "240p/index.m3u8" in master.text
        _, direct = await get_body(s3, Bucket="live-media", Key=f"origin-1/vod/{asset}/240p/0.m4s")
        assert via_edge.status_code == 200 and via_edge.content == direct
    finally:
        if origin is not None:
            await origin.close()
        for edge in ring.edges:
            await edge.close()


async def test_writes_during_an_outage_reach_the_returning_edge(tmp_path: Path) -> None:
    """2-edge ring: B dies, A keeps acknowledging writes (every live owner has them), B comes
    back empty-handed for those, and A's repair (triggered by B's return) restores k = 2."""
    ring = await start_ring(tmp_path, 2, repair_interval=3600.0)  # only membership triggers
    a, b = ring.edges
    try:
        s3 = ring.client(0)
        await call(s3.create_bucket, Bucket="outage")
        await b.close()
        bodies = {f"during/{i}": os.urandom(200_000 + i) for i in range(4)}
        for key, body in bodies.items():
            await call(s3.put_object, Bucket="outage", Key=key, Body=body)
        written = set(ring.plugin(0).store.chunks)
        manifests = set(ring.plugin(0).store.manifests)
        assert len(written) == 4
        b = ring.edges[1] = EdgeService(b.config)  # same port and directory, restarted
        await b.start()
        deadline = asyncio.get_running_loop().time() + 20
        # Repair pushes a peer's missing chunks, then its missing manifests: wait for both.
        while not (
            written <= ring.plugin(1).store.chunks.keys()
            and manifests <= set(ring.plugin(1).store.manifests)
        ):
            assert asyncio.get_running_loop().time() < deadline, "B never got the objects"
            await asyncio.sleep(0.2)
        await a.close()  # now B alone must serve everything written while it was away
        for key, body in bodies.items():
            _, data = await get_body(ring.client(1), Bucket="outage", Key=key)
            assert data == body
    finally:
        for edge in (a, b):
            await edge.close()


async def test_upload_cut_short_commits_nothing(ring: Ring) -> None:
    s3 = ring.client(0)
    await call(s3.create_bucket, Bucket="cut")
    host = ring.edges[0].url.removeprefix("http://")
    signed = sigv4.sign_headers(
        "PUT",
        "/s3/cut/partial",
        "",
        {"host": host},
        ring.access_key,
        ring.secret,
        sigv4.UNSIGNED_PAYLOAD,
        datetime.now(UTC),
    )
    head = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
    _, writer = await asyncio.open_connection(*host.split(":"))
    request = f"PUT /s3/cut/partial HTTP/1.1\r\nhost: {host}\r\n{head}"
    writer.write(f"{request}content-length: 1000000\r\n\r\n".encode() + os.urandom(300_000))
    await writer.drain()
    writer.close()  # gone after 300 kB of 1 MB
    await writer.wait_closed()
    await asyncio.sleep(0.3)
    with pytest.raises(ClientError) as exc:
        await call(s3.head_object, Bucket="cut", Key="partial")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    # The edge still works.
    await call(s3.put_object, Bucket="cut", Key="whole", Body=b"fine")
    assert (await get_body(s3, Bucket="cut", Key="whole"))[1] == b"fine"


def held_bytes(ring: Ring) -> int:
    return sum(sum(ring.plugin(i).store.chunks.values()) for i in range(len(ring.edges)))


async def test_garbage_collection_frees_only_what_nothing_refers_to(ring: Ring) -> None:
    """Deleted and overwritten objects and aborted multipart uploads free their chunks;
    live objects, pins' shared chunks and uploads in progress keep theirs; nothing goes
    while a peer is down."""
    s3 = ring.client(0)
    await call(s3.create_bucket, Bucket="gcbucket")
    keep, gone, old = os.urandom(600_000), os.urandom(700_000), os.urandom(500_000)
    await call(s3.put_object, Bucket="gcbucket", Key="keep", Body=keep)
    await call(s3.put_object, Bucket="gcbucket", Key="gone", Body=gone)
    await call(s3.put_object, Bucket="gcbucket", Key="over", Body=old)
    new = os.urandom(300_000)
    await call(s3.put_object, Bucket="gcbucket", Key="over", Body=new)
    aborted = await call(s3.create_multipart_upload, Bucket="gcbucket", Key="aborted")
    await call(s3.upload_part, Bucket="gcbucket", Key="aborted", UploadId=aborted["UploadId"],
               PartNumber=1, Body=os.urandom(300_000))  # fmt: skip
    open_upload = await call(s3.create_multipart_upload, Bucket="gcbucket", Key="open")
    open_part = os.urandom(200_000)
    upload_id = open_upload["UploadId"]
    part1 = await call(s3.upload_part, Bucket="gcbucket", Key="open", UploadId=upload_id,
                       PartNumber=1, Body=open_part)  # fmt: skip
    await call(
        s3.abort_multipart_upload, Bucket="gcbucket", Key="aborted", UploadId=aborted["UploadId"]
    )
    await call(s3.delete_object, Bucket="gcbucket", Key="gone")
    before = held_bytes(ring)
    # k=2 on 2 nodes: every byte twice
    assert before == 2 * (600_000 + 700_000 + 500_000 + 300_000 + 300_000 + 200_000)
    clusters = [ring.plugin(i).cluster for i in range(2)]

    assert [await c.gc_once(grace=3600) for c in clusters] == [0, 0]
    assert [await c.gc_once(grace=3600) for c in clusters] == [0, 0]  # all too young
    assert held_bytes(ring) == before
    # A peer down: nothing is collected, however old (it could hold the only reference).
    clusters[0].ring.mark_down(ring.edges[1].url, "test")
    assert await clusters[0].gc_once(grace=0) == 0
    clusters[0].ring.mark_up(ring.edges[1].url)
    # First pass with every peer up only marks; the second one collects.
    freed = [await c.gc_once(grace=0) for c in clusters]
    freed += [await c.gc_once(grace=0) for c in clusters]
    garbage = 700_000 + 500_000 + 300_000  # deleted, overwritten, aborted
    assert sum(freed) == 2 * garbage
    assert held_bytes(ring) == before - 2 * garbage
    for key, body in (("keep", keep), ("over", new)):
        assert (await get_body(s3, Bucket="gcbucket", Key=key))[1] == body
    # The upload still in progress completes with the part sent before the collection.
    await call(
        s3.complete_multipart_upload,
        Bucket="gcbucket",
        Key="open",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part1["ETag"]}]},
    )
    assert (await get_body(s3, Bucket="gcbucket", Key="open"))[1] == open_part
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{ring.edges[0].url}/metrics")).text
    assert re.search(r"^meshcast_storage_gc_bytes_total [1-9]", text, re.M)
