"""Connection budgets for long-lived responses (the SSE event stream, blocking playlist
reloads): each holds a connection and a task for as long as the client likes, so they get
slots per client address and in all, below the server's connection limit, and a client
over its share gets a clear refusal at once instead of everyone else getting a 503 later.

    budget = AddressBudget("event streams", per_address=8, total=256)
    slot = budget.take(client_ip(request))     # raises Refused(429 | 503)
    try: ... stream ...
    finally: slot.release()
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcast.refused import Refused


class Slot:
    """One held slot; ``release`` is idempotent (a generator's finally and a disconnect
    callback may both call it)."""

    __slots__ = ("_budget", "address")

    def __init__(self, budget: AddressBudget, address: str) -> None:
        self._budget: AddressBudget | None = budget
        self.address = address

    def release(self) -> None:
        if self._budget is not None:
            self._budget._release(self.address)
            self._budget = None

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class AddressBudget:
    what: str
    per_address: int
    total: int
    retry_after: int = 5
    _held: dict[str, int] = field(default_factory=dict)
    _count: int = 0

    @property
    def held(self) -> int:
        return self._count

    def held_by(self, address: str) -> int:
        return self._held.get(address, 0)

    def take(self, address: str) -> Slot:
        """A slot for ``address``, or Refused: 429 when the address holds its share, 503
        when every slot is taken."""
        if self._held.get(address, 0) >= self.per_address:
            raise Refused(429, f"more than {self.per_address} {self.what} from this address")
        if self._count >= self.total:
            raise Refused(503, f"{self.what}: all {self.total} slots are taken; retry later")
        self._held[address] = self._held.get(address, 0) + 1
        self._count += 1
        return Slot(self, address)

    def _release(self, address: str) -> None:
        left = self._held.get(address, 0) - 1
        if left > 0:
            self._held[address] = left
        else:
            self._held.pop(address, None)
        self._count -= 1
