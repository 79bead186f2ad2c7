"""Access policies, products and grants, in DATA/access.db (SQLite, stdlib sqlite3).

- ``resources``: per stream/asset access mode (``public`` default, or ``token``) and owner.
  A live stream's owner defaults to its stream key's owner (KeyStore); VOD assets get one
  when the asset is registered (admin call, or the VOD upload path).
- ``products``: TVOD (one resource, a price, a rental window in seconds) or SVOD (a plan
  over an explicit set of resources, or ``catalog/OWNER`` for all of them; a period).
- ``grants``: viewer x product, ``granted_at`` -> ``expires_at``. The TVOD rental window
  starts at grant time (the payment webhook's call), not at first play: simpler to reason
  about and no write on the playback path.

Every method takes ``now`` from an injected clock, so tests move time instead of sleeping.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from meshcast.tokens import valid_scope

DB_FILE: Final = "access.db"
ACCESS_MODES: Final = ("public", "token")
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS resources (
  scope TEXT PRIMARY KEY, owner TEXT, access TEXT NOT NULL DEFAULT 'public'
);
CREATE TABLE IF NOT EXISTS products (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
  price_cents INTEGER NOT NULL, currency TEXT NOT NULL, duration_s INTEGER NOT NULL,
  scopes TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
  id TEXT PRIMARY KEY, viewer TEXT NOT NULL, product TEXT NOT NULL REFERENCES products(id),
  granted_at REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_viewer ON grants(viewer);
"""


class AccessError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Policy:
    scope: str
    access: str
    owner: str | None

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "access": self.access, "owner": self.owner}


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    owner: str
    kind: str  # tvod | svod
    name: str
    price_cents: int
    currency: str
    duration_s: int  # TVOD rental window / SVOD period
    scopes: tuple[str, ...]

    def covers(self, scope: str, owner: str | None) -> bool:
        if scope in self.scopes:
            return True
        return owner is not None and owner == self.owner and f"catalog/{owner}" in self.scopes

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "kind": self.kind,
            "name": self.name,
            "price_cents": self.price_cents,
            "currency": self.currency,
            "duration_s": self.duration_s,
            "scopes": list(self.scopes),
        }


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    viewer: str
    product: str
    granted_at: float
    expires_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "viewer": self.viewer,
            "product": self.product,
            "granted_at": self.granted_at,
            "expires_at": self.expires_at,
        }


class AccessStore:
    def __init__(
        self,
        data_dir: Path,
        owner_of_stream: Callable[[str], str | None] = lambda name: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_FILE
        self.clock = clock
        self.owner_of_stream = owner_of_stream
        # One connection, serialized: calls are short and the event loop is single-threaded.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self.path.chmod(0o600)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # ---- policies ---------------------------------------------------------------------

    def policy(self, scope: str) -> Policy:
        with self._lock:
            row = self._db.execute(
                "SELECT owner, access FROM resources WHERE scope = ?", (scope,)
            ).fetchone()
        owner: str | None = row[0] if row else None
        if owner is None and scope.startswith("live/"):
            owner = self.owner_of_stream(scope[5:])
        return Policy(scope, row[1] if row else "public", owner)

    def set_policy(self, scope: str, access: str, owner: str | None) -> Policy:
        if access not in ACCESS_MODES:
            raise AccessError(400, f"access must be one of {', '.join(ACCESS_MODES)}")
        with self._lock:
            self._db.execute(
                "INSERT INTO resources(scope, owner, access) VALUES (?, ?, ?) "
                "ON CONFLICT(scope) DO UPDATE SET access = excluded.access, "
                "owner = COALESCE(excluded.owner, resources.owner)",
                (scope, owner, access),
            )
        return self.policy(scope)

    # ---- products ---------------------------------------------------------------------

    def create_product(
        self,
        owner: str,
        kind: str,
        name: str,
        price_cents: int,
        currency: str,
        duration_s: int,
        scopes: list[str],
    ) -> Product:
        if kind not in ("tvod", "svod"):
            raise AccessError(400, "kind must be 'tvod' or 'svod'")
        if not scopes or len(scopes) > 1000 or not all(valid_scope(s) for s in scopes):
            raise AccessError(400, "scopes: 1-1000 of live/NAME, vod/ASSET or catalog/OWNER")
        if kind == "tvod" and (len(scopes) != 1 or scopes[0].startswith("catalog/")):
            raise AccessError(400, "a TVOD product is for exactly one stream or asset")
        for scope in scopes:
            if scope.startswith("catalog/"):
                if scope != f"catalog/{owner}":
                    raise AccessError(403, f"{scope} is not {owner!r}'s catalogue")
            elif self.policy(scope).owner != owner:
                raise AccessError(403, f"{scope} is not owned by {owner!r}")
        product = Product(
            f"prod_{secrets.token_hex(8)}",
            owner,
            kind,
            name,
            price_cents,
            currency,
            duration_s,
            tuple(dict.fromkeys(scopes)),
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO products VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    product.id,
                    owner,
                    kind,
                    name,
                    price_cents,
                    currency,
                    duration_s,
                    json.dumps(product.scopes),
                    self.clock(),
                ),
            )
        return product

    def product(self, product_id: str) -> Product | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, owner, kind, name, price_cents, currency, duration_s, scopes "
                "FROM products WHERE id = ?",
                (product_id,),
            ).fetchone()
        return None if row is None else _product(row)

    def products(self, owner: str | None = None) -> list[Product]:
        query = (
            "SELECT id, owner, kind, name, price_cents, currency, duration_s, scopes FROM products"
        )
        with self._lock:
            if owner is None:
                rows = self._db.execute(query + " ORDER BY created").fetchall()
            else:
                rows = self._db.execute(
                    query + " WHERE owner = ? ORDER BY created", (owner,)
                ).fetchall()
        return [_product(r) for r in rows]

    # ---- grants -----------------------------------------------------------------------

    def grant(self, viewer: str, product_id: str) -> Grant:
        product = self.product(product_id)
        if product is None:
            raise AccessError(404, f"no product {product_id!r}")
        now = self.clock()
        grant = Grant(
            f"grant_{secrets.token_hex(8)}", viewer, product.id, now, now + product.duration_s
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO grants VALUES (?, ?, ?, ?, ?)",
                (grant.id, viewer, product.id, grant.granted_at, grant.expires_at),
            )
        return grant

    def active_grant(self, viewer: str, scope: str) -> tuple[Grant, Product] | None:
        """The active grant covering ``scope`` that lasts longest, or None."""
        now = self.clock()
        kind, _, name = scope.partition("/")
        owner = name if kind == "catalog" else self.policy(scope).owner
        with self._lock:
            rows = self._db.execute(
                "SELECT g.id, g.viewer, g.product, g.granted_at, g.expires_at, "
                "p.id, p.owner, p.kind, p.name, p.price_cents, p.currency, p.duration_s, "
                "p.scopes FROM grants g JOIN products p ON p.id = g.product "
                "WHERE g.viewer = ? AND g.granted_at <= ? AND g.expires_at > ? "
                "ORDER BY g.expires_at DESC",
                (viewer, now, now),
            ).fetchall()
        for row in rows:
            grant, product = Grant(*row[:5]), _product(row[5:])
            if kind == "catalog":
                if f"catalog/{name}" in product.scopes:
                    return grant, product
            elif product.covers(scope, owner):
                return grant, product
        return None


def _product(row: tuple[Any, ...]) -> Product:
    return Product(
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], tuple(json.loads(row[7]))
    )
