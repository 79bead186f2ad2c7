"""Products, grants and playback-token eligibility with an injected clock (no sleeps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcast.ratelimit import FailureLimiter
from origin.entitlements import AccessError, AccessStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> AccessStore:
    owners = {"show": "alice", "news": "alice", "bobcast": "bob"}
    s = AccessStore(tmp_path, owners.get, clock)
    for asset, owner in (("film", "alice"), ("doc", "alice"), ("bobfilm", "bob")):
        s.set_policy(f"vod/{asset}", "token", owner)
    return s


def test_policy_defaults_public_and_owner_from_stream_key(store: AccessStore) -> None:
    assert store.policy("live/show").to_json() == {
        "scope": "live/show",
        "access": "public",
        "owner": "alice",
    }
    assert store.set_policy("live/show", "token", None).access == "token"
    assert store.policy("live/show").owner == "alice"
    with pytest.raises(AccessError):
        store.set_policy("live/show", "open", None)


def test_tvod_rental_window_expires(store: AccessStore, clock: Clock) -> None:
    rental = store.create_product("alice", "tvod", "Film 48h", 399, "EUR", 48 * 3600, ["vod/film"])
    grant = store.grant("v1", rental.id)
    assert grant.expires_at == clock.now + 48 * 3600
    assert store.active_grant("v1", "vod/film") is not None
    assert store.active_grant("v2", "vod/film") is None  # another viewer
    assert store.active_grant("v1", "vod/doc") is None  # another asset
    clock.now += 48 * 3600 - 1
    assert store.active_grant("v1", "vod/film") is not None
    clock.now += 1
    assert store.active_grant("v1", "vod/film") is None


def test_svod_covers_exactly_its_set(store: AccessStore, clock: Clock) -> None:
    plan = store.create_product(
        "alice", "svod", "Monthly", 999, "USD", 30 * 86400, ["vod/film", "live/show"]
    )
    store.grant("sub", plan.id)
    assert store.active_grant("sub", "vod/film") is not None
    assert store.active_grant("sub", "live/show") is not None
    for outside in ("vod/doc", "live/news", "vod/bobfilm", "live/bobcast", "catalog/alice"):
        assert store.active_grant("sub", outside) is None, outside
    clock.now += 30 * 86400
    assert store.active_grant("sub", "vod/film") is None


def test_catalog_plan_covers_the_owners_resources_only(store: AccessStore) -> None:
    plan = store.create_product("alice", "svod", "All", 1999, "USD", 86400, ["catalog/alice"])
    store.grant("fan", plan.id)
    for inside in ("vod/film", "vod/doc", "live/show", "live/news", "catalog/alice"):
        assert store.active_grant("fan", inside) is not None, inside
    for outside in ("vod/bobfilm", "live/bobcast", "catalog/bob", "vod/unowned"):
        assert store.active_grant("fan", outside) is None, outside


def test_products_only_over_own_resources(store: AccessStore) -> None:
    with pytest.raises(AccessError) as exc:
        store.create_product("alice", "tvod", "x", 1, "USD", 60, ["vod/bobfilm"])
    assert exc.value.status == 403
    with pytest.raises(AccessError):
        store.create_product("alice", "svod", "x", 1, "USD", 60, ["catalog/bob"])
    with pytest.raises(AccessError):
        store.create_product("alice", "tvod", "x", 1, "USD", 60, ["vod/film", "vod/doc"])
    with pytest.raises(AccessError):
        store.create_product("alice", "tvod", "x", 1, "USD", 60, ["../etc"])
    with pytest.raises(AccessError) as missing:
        store.grant("v", "prod_missing")
    assert missing.value.status == 404


def test_persisted_across_restarts(tmp_path: Path, clock: Clock) -> None:
    first = AccessStore(tmp_path, lambda n: "alice", clock)
    p = first.create_product("alice", "tvod", "Show", 100, "USD", 3600, ["live/show"])
    first.grant("v", p.id)
    first.close()
    second = AccessStore(tmp_path, lambda n: "alice", clock)
    assert second.active_grant("v", "live/show") is not None
    assert [x.id for x in second.products("alice")] == [p.id]
    assert (tmp_path / "access.db").stat().st_mode & 0o077 == 0


def test_failure_limiter_window(clock: Clock) -> None:
    limiter = FailureLimiter("test", max_failures=3, window=60.0, clock=clock)
    for _ in range(2):
        limiter.failed("1.2.3.4")
    assert not limiter.blocked("1.2.3.4")
    limiter.failed("1.2.3.4")
    assert limiter.blocked("1.2.3.4") and not limiter.blocked("5.6.7.8")
    assert 0 < limiter.retry_after("1.2.3.4") <= 61
    clock.now += 60
    assert not limiter.blocked("1.2.3.4")
