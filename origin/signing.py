"""The origin's token signing keys (Ed25519), kept in DATA/token_keys.json (mode 0600).

The newest key signs; every key still listed verifies, so ``rotate`` never invalidates
tokens in flight. ``retire`` drops keys older than the newest ``keep`` once no token signed
by them can still be valid (the caller picks when: longer than the maximum token TTL).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from meshcast.files import atomic_write
from meshcast.tokens import Claims, b64url_decode, b64url_encode, public_key_json, sign

KEYS_FILE: Final = "token_keys.json"


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey
    created: float

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


class Keyring:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / KEYS_FILE
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = []
        self._load()
        if not self._keys:
            self.rotate()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = json.loads(self.path.read_text())
        self._keys = [
            SigningKey(
                k["kid"],
                Ed25519PrivateKey.from_private_bytes(b64url_decode(k["d"])),
                float(k["created"]),
            )
            for k in raw["keys"]
        ]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "version": 1,
            "keys": [
                {
                    "kid": k.kid,
                    "created": k.created,
                    "d": b64url_encode(
                        k.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
                    ),
                }
                for k in self._keys
            ],
        }
        atomic_write(self.path, json.dumps(body).encode(), private=True)

    def rotate(self) -> str:
        with self._lock:
            kid = secrets.token_hex(4)
            self._keys.append(SigningKey(kid, Ed25519PrivateKey.generate(), time.time()))
            self._save()
            return kid

    def retire(self, keep: int = 2) -> None:
        with self._lock:
            self._keys = self._keys[-keep:]
            self._save()

    @property
    def current(self) -> SigningKey:
        return self._keys[-1]

    def public_keys(self) -> dict[str, Ed25519PublicKey]:
        return {k.kid: k.public for k in self._keys}

    def key_set(self) -> dict[str, object]:
        return {"keys": [public_key_json(k.kid, k.public) for k in self._keys]}

    def mint(self, claims: Claims) -> str:
        key = self.current
        return sign(key.private, key.kid, claims)
