"""Lockouts per address and per presented credential (issue 20, attack 7)."""

from __future__ import annotations

from meshcast.ratelimit import Lockout, credential_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_credential_id_is_the_public_part_only() -> None:
    assert credential_id("api_0123abcd_" + "f" * 64) == "api_0123abcd"
    assert credential_id("stream_x_y") == "stream_x"
    for junk in ("", "nokey", "a_b", "_x_y", "a__y", "a_" + "b" * 40 + "_c", "a b_c_d"):
        assert credential_id(junk) is None, junk


def test_address_and_credential_are_counted_separately() -> None:
    clock = Clock()
    lock = Lockout("test", max_failures=3, window=60.0, clock=clock)
    # Three failures from one address, each on another key id: then 429 for that address.
    assert [lock.failed("10.0.0.1", f"api_k{i}") for i in range(3)] == [None, None, None]
    assert lock.failed("10.0.0.1", "api_k9") is not None
    # Another address, another key: unaffected.
    assert lock.failed("10.0.0.2", "api_other") is None
    # One key id guessed at from many addresses: 429 for that key id, wherever from.
    for i in range(3):
        assert lock.failed(f"192.0.2.{i}", "api_victim") is None
    retry = lock.failed("192.0.2.200", "api_victim")
    assert retry is not None and 0 < retry <= 61
    # The window slides: a minute later everything is forgiven.
    clock.now += 61
    assert lock.failed("10.0.0.1", "api_k9") is None
    assert lock.failed("192.0.2.201", "api_victim") is None


def test_malformed_keys_count_against_the_address_only() -> None:
    lock = Lockout("test", max_failures=2, clock=Clock())
    assert lock.failed("10.0.0.1", None) is None
    assert lock.failed("10.0.0.1", None) is None
    assert lock.failed("10.0.0.1", None) is not None
    assert lock.failed("10.0.0.9", None) is None
