"""Stream keys, stored hashed under the data directory.

A key is ``<kind>_<key id>_<secret>``. The id finds the record in O(1) (so publishing does
not try every hash); only a salted SHA-256 of the secret is stored. The secret is 256
random bits, so a slow KDF would add latency to every publish without adding security.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

KEYS_FILE: Final = "keys.json"
STREAM_KIND: Final = "stream"
# API keys manage their owner's (= the key's NAME) streams, assets and products; admin keys
# are for operators and payment webhooks (grants). Other branches add kinds here.
API_KIND: Final = "api"
ADMIN_KIND: Final = "admin"
KINDS: Final = [STREAM_KIND, API_KIND, ADMIN_KIND]
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"version": 1, "keys": [asdict(r) for r in records.values()]}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys.")
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(self.path)
        self._mtime = None

    def create(self, name: str, kind: str = STREAM_KIND, owner: str | None = None) -> str:
        validate_stream_name(name)
        if owner is not None:
            validate_stream_name(owner)
        with self._lock:
            records = dict(self._load())
            slot = _slot(name, kind)
            existing = records.get(slot)
            if existing is not None and existing.active:
                raise DuplicateName(f"a key named {name!r} exists; revoke it first")
            key_id = secrets.token_hex(6)
            secret = secrets.token_hex(32)
            salt = secrets.token_hex(16)
            records[slot] = KeyRecord(
                name, kind, key_id, salt, _digest(salt, secret), time.time(), owner=owner
            )
            self._save(records)
        return f"{kind}_{key_id}_{secret}"

    def revoke(self, name: str, kind: str = STREAM_KIND) -> None:
        with self._lock:
            records = dict(self._load())
            record = records.get(_slot(name, kind))
            if record is None or not record.active:
                raise UnknownName(f"no active key named {name!r}")
            record.revoked = time.time()
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
