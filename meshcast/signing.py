"""Node identity and signatures for the contributor network (sans-IO apart from key files).

Every signed message is a JSON object signed over its *canonical* bytes: keys sorted, no
spaces, UTF-8, no NaN/Infinity. Anyone with the signer's public key can re-encode the
object and check the Ed25519 signature, in any language that sorts keys the same way
(integers and strings only in the fields that matter; timestamps are floats rounded to
milliseconds, which every JSON library writes identically).

A node id is ``node_`` + base32 of the first 20 bytes of sha256(raw public key): it names
the key, so a node cannot claim someone else's id without their private key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshcast.files import atomic_write

NODE_KEY_FILE: Final = "node.key"
COORDINATOR_KEY_FILE: Final = "coordinator.key"
ZERO_HASH: Final = "0" * 64


class SignatureError(Exception):
    """A signature, public key or signed message is malformed or does not verify."""


class KeyFileExists(Exception):
    pass


def canonical_json(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise SignatureError(f"{what} is not base64") from exc
    if len(raw) != size:
        raise SignatureError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def node_id_for(public_key_b64: str) -> str:
    raw = _unb64(public_key_b64, 32, "public key")
    digest = hashlib.sha256(raw).digest()[:20]
    return "node_" + base64.b32encode(digest).decode("ascii").lower()


def verify(public_key_b64: str, message: bytes, signature_b64: str) -> None:
    """Raise SignatureError unless ``signature_b64`` signs ``message`` under the key."""
    if not isinstance(public_key_b64, str) or not isinstance(signature_b64, str):
        raise SignatureError("public key and signature must be base64 strings")
    key = Ed25519PublicKey.from_public_bytes(_unb64(public_key_b64, 32, "public key"))
    try:
        key.verify(_unb64(signature_b64, 64, "signature"), message)
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc


def verify_object(public_key_b64: str, obj: Any, signature_b64: str) -> None:
    verify(public_key_b64, canonical_json(obj), signature_b64)


class NodeKey:
    """An Ed25519 key pair; ``DATA/node.key`` holds the private key as PKCS#8 PEM (0600)."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = _b64(raw)
        self.node_id = node_id_for(self.public_key)

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> NodeKey:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise SignatureError(f"{path} does not hold an Ed25519 private key")
        return cls(private)

    @classmethod
    def create(cls, path: Path, force: bool = False) -> NodeKey:
        """Write a new key to ``path``; an existing key is an identity (and its rewards):
        never replaced unless ``force``."""
        if path.exists() and not force:
            raise KeyFileExists(f"{path} exists (node {cls.load(path).node_id}); use --force")
        key = cls.generate()
        key.save(path)
        return key

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        return cls.load(path) if path.exists() else cls.create(path)

    def save(self, path: Path) -> None:
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(path, pem, private=True, durable=True)

    def sign(self, message: bytes) -> str:
        return _b64(self._private.sign(message))

    def sign_object(self, obj: Any) -> str:
        return self.sign(canonical_json(obj))
