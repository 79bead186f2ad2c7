"""Failed-credential limiters: a sliding window of failures per key (an address or a
presented credential), and ``Lockout``, which combines both.

Keys carry 256 random bits, so guessing is hopeless anyway; the limits keep scanners from
burning log lines and tell them to stop. After ``max_failures`` failures within ``window``
seconds a key is blocked until its oldest failure leaves the window. Blocking is logged
once per block, and a success does not reset the count (a valid key of one's own must not
unlock guessing at others').
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class FailureLimiter:
    what: str
    max_failures: int = 10
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 100_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _logged: set[str] = field(default_factory=set)

    def _trim(self, ip: str, now: float) -> deque[float]:
        times = self._failures.get(ip)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[ip]
            self._logged.discard(ip)
        return times

    def blocked(self, ip: str) -> bool:
        """Over the limit now (``ip`` is any key: an address or a credential id)."""
        return len(self._trim(ip, self.clock())) >= self.max_failures

    def retry_after(self, ip: str) -> int:
        times = self._trim(ip, self.clock())
        if not times:
            return 0
        return max(1, int(times[0] + self.window - self.clock()) + 1)

    def failed(self, ip: str) -> None:
        now = self.clock()
        times = self._trim(ip, now)
        if not times:
            if len(self._failures) >= self.max_clients:
                # Bounded memory under a spray of source addresses: forget the oldest.
                oldest = next(iter(self._failures))
                del self._failures[oldest]
                self._logged.discard(oldest)
            times = self._failures[ip] = deque(maxlen=self.max_failures * 2)
        times.append(now)
        if len(times) >= self.max_failures and ip not in self._logged:
            self._logged.add(ip)
            log.warning(
                "%s: %s blocked after %d failed attempts in %.0f s",
                self.what,
                ip,
                len(times),
                self.window,
            )


def credential_id(key: str) -> str | None:
    """The public part of a presented ``KIND_ID_SECRET`` key (``KIND_ID``: it names one
    credential without its secret), or None for anything not shaped like a key."""
    kind, sep, rest = key.partition("_")
    key_id, sep2, _ = rest.partition("_")
    if not (sep and sep2 and kind.isalnum() and key_id.isalnum()) or len(key_id) > 32:
        return None
    return f"{kind}_{key_id}"


class Lockout:
    """Failed credential checks, counted per client address and per presented credential
    (the key's public ``KIND_ID``) separately: one budget of each across RTMP, WHIP and
    the API.

    A presented credential is always checked, and a valid one is always accepted: people
    behind one NAT or proxy share an address, and anyone can present someone else's key
    id, so neither count may refuse a credential that is right. What a lock changes is the
    answer to *failed* checks (429 with Retry-After instead of 401, and one log line per
    lock instead of one per attempt). Guessing itself is hopeless (256-bit secrets); the
    lock tells scanners to go away and keeps logs readable.
    """

    def __init__(
        self,
        what: str,
        max_failures: int = 10,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # One window store, two key spaces ("address …", "credential …").
        self.failures = FailureLimiter(what, max_failures, window, clock)

    @property
    def max_failures(self) -> int:
        return self.failures.max_failures

    @max_failures.setter
    def max_failures(self, value: int) -> None:
        self.failures.max_failures = value

    def failed(self, address: str, credential: str | None) -> int | None:
        """Count a failed check; the Retry-After seconds when the address or the presented
        credential was already at its limit (answer 429), None otherwise (answer 401): the
        first ``max_failures`` failures of each are told what was wrong."""
        retry = 0
        keys = [f"address {address}"]
        if credential is not None:
            keys.append(f"credential {credential}")
        for key in keys:
            if self.failures.blocked(key):
                retry = max(retry, self.failures.retry_after(key))
            self.failures.failed(key)
        return retry or None
