"""Playback access control at the edge, without an origin request per viewer request.

The edge holds two caches fed by the origin:
- the origin's public signing keys (``GET /api/tokens/keys``), fetched at start, refreshed
  every ``KEYS_REFRESH_S`` and at most every ``UNKNOWN_KID_REFETCH_S`` when a token names
  a key id we do not know (a rotation we have not seen yet);
- each stream/asset's policy (``GET /api/access/KIND/NAME`` -> public|token + owner),
  cached ``POLICY_TTL_S`` per name, one fetch in flight per name (single-flight), stale
  copies used while the origin is unreachable, and fail-closed (503) when none exists.

The policy is per stream, not per file, so a segment requested without its playlist is
checked exactly like the playlist. Verified tokens are remembered (bounded) so the
FastPath checks a repeat viewer with two dict lookups and no signature verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import CollectorRegistry, Counter

from meshcast.tokens import CLOCK_SKEW, Claims, TokenError, authorize, covers, parse_key_set

log = logging.getLogger(__name__)

POLICY_TTL_S: Final = 5.0
KEYS_REFRESH_S: Final = 60.0
UNKNOWN_KID_REFETCH_S: Final = 10.0
VERIFIED_CACHE_MAX: Final = 50_000
POLICY_CACHE_MAX: Final = 20_000
# A policy older than TTL x this is not served stale any more: the request waits for it.
STALE_FACTOR: Final = 12


@dataclass(frozen=True, slots=True)
class EdgePolicy:
    access: str
    owner: str | None
    fetched_at: float


class PolicyUnavailable(Exception):
    pass


class AccessControl:
    def __init__(
        self,
        origin: Callable[[], str],
        client: httpx.AsyncClient,
        registry: CollectorRegistry,
        policy_ttl: float = POLICY_TTL_S,
    ) -> None:
        self.origin = origin
        self.policy_ttl = policy_ttl
        self.client = client
        self.keys: dict[str, Ed25519PublicKey] = {}
        self.policies: dict[tuple[str, str], EdgePolicy] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[EdgePolicy]] = {}
        self._background: set[asyncio.Task[EdgePolicy]] = set()
        self._verified: dict[str, Claims] = {}
        self._last_key_fetch = -1e9
        self.denied = Counter(
            "meshcast_edge_access_denied",
            "Playback requests refused by the edge",
            ["reason"],
            registry=registry,
        )
        self.policy_fetches = Counter(
            "meshcast_edge_policy_fetches",
            "Access policy fetches from the origin",
            registry=registry,
        )
        self.key_fetches = Counter(
            "meshcast_edge_key_fetches",
            "Signing key set fetches from the origin",
            registry=registry,
        )

    # ---- keys -------------------------------------------------------------------------

    async def refresh_keys(self) -> bool:
        self._last_key_fetch = time.monotonic()
        self.key_fetches.inc()
        try:
            response = await self.client.get(f"{self.origin()}/api/tokens/keys", timeout=5.0)
            response.raise_for_status()
            keys = parse_key_set(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("edge: could not fetch the origin's token keys: %s", exc)
            return False
        self.keys = keys
        return True

    async def keys_loop(self) -> None:
        while True:
            await self.refresh_keys()
            await asyncio.sleep(KEYS_REFRESH_S)

    # ---- policies ---------------------------------------------------------------------

    def cached_policy(self, kind: str, name: str, now: float) -> EdgePolicy | None:
        policy = self.policies.get((kind, name))
        if policy is None or now - policy.fetched_at > self.policy_ttl:
            return None
        return policy

    async def policy(self, kind: str, name: str, revalidate: bool = False) -> EdgePolicy:
        """The cached policy; past its TTL served stale while it refreshes, unless
        ``revalidate`` (then the caller waits for the fresh one)."""
        now = time.monotonic()
        slot = (kind, name)
        cached = self.policies.get(slot)
        if cached is not None and now - cached.fetched_at <= self.policy_ttl:
            return cached
        if (
            cached is not None
            and now - cached.fetched_at <= self.policy_ttl * STALE_FACTOR
            and not (revalidate and cached.access == "public")
        ):
            # Stale-while-revalidate: viewers never wait on the refresh of a known policy
            # (a change still reaches this edge within about one TTL).
            if slot not in self._inflight:
                task = asyncio.get_running_loop().create_task(self._refresh(slot))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return cached
        return await self._refresh(slot)

    async def _refresh(self, slot: tuple[str, str]) -> EdgePolicy:
        """One fetch per name at a time; concurrent callers share its result."""
        future = self._inflight.get(slot)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[slot] = future
        try:
            policy = await self._fetch_policy(*slot)
        except BaseException as exc:
            if isinstance(exc, PolicyUnavailable):
                future.set_exception(exc)
                future.exception()  # retrieved: waiters (if any) re-raise it themselves
            else:
                future.cancel()  # never leave waiters hanging
            raise
        finally:
            self._inflight.pop(slot, None)
        future.set_result(policy)
        return policy

    async def _fetch_policy(self, kind: str, name: str) -> EdgePolicy:
        self.policy_fetches.inc()
        try:
            response = await self.client.get(
                f"{self.origin()}/api/access/{kind}/{name}", timeout=3.0
            )
            if response.status_code == 404:
                # Not a meshcast origin (e.g. a plain web server in front of files): it has
                # no access control, so it cannot have made anything token-only.
                return self._remember(kind, name, "public", None)
            response.raise_for_status()
            body = response.json()
            access, owner = body["access"], body.get("owner")
            if access not in ("public", "token"):
                raise ValueError(f"unknown access mode {access!r}")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            stale = self.policies.get((kind, name))
            if stale is not None:
                log.warning("edge: policy of %s/%s: %s; using the cached one", kind, name, exc)
                return stale
            raise PolicyUnavailable(f"access policy of {kind}/{name} unavailable: {exc}") from exc
        return self._remember(kind, name, access, owner if isinstance(owner, str) else None)

    def _remember(self, kind: str, name: str, access: str, owner: str | None) -> EdgePolicy:
        policy = EdgePolicy(access, owner, time.monotonic())
        self.policies.pop((kind, name), None)  # re-inserted last: the dict stays oldest-first
        if len(self.policies) >= POLICY_CACHE_MAX:
            # Requests for random names must not grow memory without bound: drop the oldest.
            del self.policies[next(iter(self.policies))]
        self.policies[(kind, name)] = policy
        return policy

    # ---- checks -----------------------------------------------------------------------

    def fast_allow(self, kind: str, name: str, token: str | None) -> bool:
        """True when the cached state alone admits the request; False means "take the full
        path" (which may still admit it), never "refuse"."""
        now = time.monotonic()
        policy = self.cached_policy(kind, name, now)
        if policy is None:
            return False
        if policy.access == "public":
            return True
        if token is None:
            return False
        claims = self._verified.get(token)
        if claims is None:
            return False
        wall = time.time()
        return claims.nbf - CLOCK_SKEW <= wall <= claims.exp + CLOCK_SKEW and covers(
            claims, kind, name, policy.owner
        )

    async def check(self, kind: str, name: str, token: str | None) -> Claims | None:
        """None for a public resource, the claims for an admitted token; raises TokenError
        (refused) or PolicyUnavailable (fail closed)."""
        # A viewer with a token on a stream we last knew as public: the stream may have just
        # become token-only, and a stale "public" would drop the token and get the viewer a
        # 401 from upstream, so that request waits for the fresh policy.
        policy = await self.policy(kind, name, revalidate=token is not None)
        if policy.access == "public":
            return None
        try:
            try:
                claims = authorize(
                    token, kind, name, policy.owner, self.keys, time.time(), CLOCK_SKEW
                )
            except TokenError as exc:
                if exc.reason != "unknown_key" or not await self._maybe_refetch_keys():
                    raise
                claims = authorize(
                    token, kind, name, policy.owner, self.keys, time.time(), CLOCK_SKEW
                )
        except TokenError as exc:
            self.denied.labels(exc.reason).inc()
            raise
        assert token is not None
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    async def _maybe_refetch_keys(self) -> bool:
        if time.monotonic() - self._last_key_fetch < UNKNOWN_KID_REFETCH_S:
            return False
        return await self.refresh_keys()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, PolicyUnavailable):
                await task
