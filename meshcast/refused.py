"""One exception for a request refused with a reason (sans-IO: receipts, inference jobs and
the coordinator raise it, the HTTP layer answers ``code`` with ``reason``)."""

from __future__ import annotations


class Refused(Exception):
    """``code`` is the HTTP status to answer; the message is the reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
