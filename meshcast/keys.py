"""Stream keys, stored hashed under the data directory.

A key is ``<kind>_<key id>_<secret>``. The id finds the record in O(1) (so publishing does
not try every hash); only a salted SHA-256 of the secret is stored. The secret is 256
random bits, so a slow KDF would add latency to every publish without adding security.

S3 access keys (kind ``s3``) are the exception: SigV4 is an HMAC keyed by the secret, so the
verifier needs the secret itself, not a hash. They are kept in the same file, which is only
ever written 0600 by its owner. Encrypting them at rest would need a key stored next to the
file (same protection) or typed in at every start (no unattended edges), so we don't pretend.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from meshcast.files import atomic_write

KEYS_FILE: Final = "keys.json"
STREAM_KIND: Final = "stream"
S3_KIND: Final = "s3"
# API keys manage their owner's (= the key's NAME) streams, assets and products; admin keys
# are for operators and payment webhooks (grants).
API_KIND: Final = "api"
ADMIN_KIND: Final = "admin"
KINDS: Final = (STREAM_KIND, S3_KIND, API_KIND, ADMIN_KIND)
_AKID_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class KeyError_(Exception):
    """Base for key store errors (named so it does not shadow the builtin)."""


class InvalidName(KeyError_):
    pass


class DuplicateName(KeyError_):
    pass


class UnknownName(KeyError_):
    pass


class KeyRejected(KeyError_):
    """A presented key is malformed, unknown, wrong or revoked; the message says which."""


def validate_stream_name(name: str) -> str:
    """Stream names become URL path segments and file names: keep them boring."""
    if not 1 <= len(name) <= 64 or not set(name) <= _NAME_CHARS or name[0] in "._-":
        raise InvalidName(
            f"invalid stream name {name!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(slots=True)
class KeyRecord:
    name: str
    kind: str
    key_id: str
    salt: str
    hash: str
    created: float
    revoked: float | None = None
    # The creator a stream belongs to (API keys of that name manage it); None: NAME itself.
    owner: str | None = None
    # Only for S3 keys: the secret in clear (see the module docstring); None otherwise.
    secret: str | None = None
    # Stream keys: publications are recorded as VOD assets (``keys create … --no-record``).
    record: bool = True

    @property
    def active(self) -> bool:
        return self.revoked is None


def _slot(name: str, kind: str) -> str:
    """Records are stored per name; other kinds get their own namespace, so a creator can
    hold a stream key and an API key under the same NAME (stream keys keep the bare name,
    the file format of existing data dirs)."""
    return name if kind == STREAM_KIND else f"{kind}:{name}"


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class KeyStore:
    """File-backed key store; re-reads the file when another process (the CLI) changed it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_FILE
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._records: dict[str, KeyRecord] = {}

    def _load(self) -> dict[str, KeyRecord]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._records, self._mtime = {}, None
            return self._records
        if mtime != self._mtime:
            raw = json.loads(self.path.read_text())
            records = [KeyRecord(**r) for r in raw["keys"]]
            self._records = {_slot(r.name, r.kind): r for r in records}
            self._mtime = mtime
        return self._records

    def _save(self, records: dict[str, KeyRecord]) -> None:
        body = json.dumps({"version": 1, "keys": [asdict(r) for r in records.values()]}, indent=1)
        atomic_write(self.path, body.encode(), private=True, durable=True)
        self._mtime = None

    def create(
        self, name: str, kind: str = STREAM_KIND, owner: str | None = None, record: bool = True
    ) -> str:
        """A new key; for kind ``s3`` the result is ``ACCESS_KEY_ID SECRET_ACCESS_KEY``."""
        validate_stream_name(name)
        if owner is not None:
            validate_stream_name(owner)
        if kind not in KINDS:
            raise InvalidName(f"unknown key kind {kind!r} (known: {', '.join(KINDS)})")
        with self._lock:
            records = dict(self._load())
            slot = _slot(name, kind)
            existing = records.get(slot)
            if existing is not None and existing.active:
                raise DuplicateName(f"a key named {name!r} exists; revoke it first")
            salt = secrets.token_hex(16)
            if kind == S3_KIND:
                # AWS-shaped: 20 upper-case characters and a 40-character secret, so tools
                # that validate the shape accept them.
                key_id = "MC" + "".join(secrets.choice(_AKID_CHARS) for _ in range(18))
                secret = secrets.token_urlsafe(30)
                entry = KeyRecord(
                    name, kind, key_id, salt, _digest(salt, secret), time.time(), secret=secret
                )
                result = f"{key_id} {secret}"
            else:
                key_id = secrets.token_hex(6)
                secret = secrets.token_hex(32)
                entry = KeyRecord(
                    name,
                    kind,
                    key_id,
                    salt,
                    _digest(salt, secret),
                    time.time(),
                    owner=owner,
                    record=record,
                )
                result = f"{kind}_{key_id}_{secret}"
            records[slot] = entry
            self._save(records)
        return result

    def s3_secret(self, access_key_id: str) -> tuple[str, str]:
        """(name, secret) of an active S3 key; KeyRejected names why not."""
        with self._lock:
            records = self._load()
        for record in records.values():
            if record.kind == S3_KIND and record.key_id == access_key_id:
                if not record.active:
                    raise KeyRejected(f"the key of {record.name!r} was revoked")
                assert record.secret is not None
                return record.name, record.secret
        raise KeyRejected("unknown access key id")

    def revoke(self, name: str, kind: str | None = None) -> None:
        """Revoke NAME's key of ``kind``; without a kind, NAME's only active key."""
        with self._lock:
            records = dict(self._load())
            found = [
                r
                for r in records.values()
                if r.name == name and r.active and (kind is None or r.kind == kind)
            ]
            if not found:
                raise UnknownName(f"no active key named {name!r}")
            if len(found) > 1:
                kinds = ", ".join(sorted(r.kind for r in found))
                raise UnknownName(f"{name!r} has several keys ({kinds}): pass --kind")
            found[0].revoked = time.time()
            self._save(records)

    def list(self) -> list[KeyRecord]:
        with self._lock:
            return sorted(self._load().values(), key=lambda r: r.created)

    def owner_of(self, stream: str) -> str | None:
        """The creator of a stream (its active stream key's owner), or None."""
        with self._lock:
            record = self._load().get(_slot(stream, STREAM_KIND))
        if record is None or not record.active:
            return None
        return record.owner or record.name

    def records(self, stream: str) -> bool:
        """Whether publications of ``stream`` are recorded (its active stream key says)."""
        with self._lock:
            record = self._load().get(_slot(stream, STREAM_KIND))
        return record is not None and record.active and record.record

    def verify(self, key: str, kind: str = STREAM_KIND) -> str:
        """Return the name the key belongs to; raise KeyRejected naming the cause."""
        parts = key.split("_", 2)
        if len(parts) != 3 or parts[0] != kind:
            raise KeyRejected(f"malformed {kind} key")
        _, key_id, secret = parts
        with self._lock:
            records = self._load()
        for record in records.values():
            if record.key_id == key_id and record.kind == kind:
                if not hmac.compare_digest(_digest(record.salt, secret), record.hash):
                    raise KeyRejected(f"wrong secret for the key of {record.name!r}")
                if not record.active:
                    raise KeyRejected(f"the key of {record.name!r} was revoked")
                return record.name
        raise KeyRejected(f"unknown {kind} key")
