"""Failed-credential limiter: per client IP, a sliding window of failures.

Keys carry 256 random bits, so guessing is hopeless anyway; the limit keeps scanners from
burning CPU and log lines. After ``max_failures`` failures within ``window`` seconds an IP
is refused (429 / connection closed) until its oldest failure leaves the window. Blocking
is logged once per block, and a success does not reset the count (a valid key of one's own
must not unlock guessing at others').
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
