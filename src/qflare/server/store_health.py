"""Whether the database takes writes, as the coordinators see it, and when to try again.

A failed write opens an *outage*: it is logged once (one line, the database's reason), clients
are answered 503 with ``Retry-After`` and the coordinators try a write again at most every
``retry_s`` seconds instead of on every tick or request. The first write that commits closes
the outage (logged once, with its length).
"""

from __future__ import annotations

import math

from sqlalchemy.exc import SQLAlchemyError

from qflare.server import events
from qflare.store.db import DatabaseUnavailable, describe_database_error

__all__ = ["StoreHealth"]


class StoreHealth:
    """Outage bookkeeping of one coordinator (called under the coordinator's lock).

    Args:
        retry_s: Pause between write attempts during an outage.
    """

    def __init__(self, retry_s: float = 1.0) -> None:
        self.retry_s = retry_s
        self.failing_since: float | None = None
        self.failures = 0
        self._retry_at = 0.0

    @property
    def failing(self) -> bool:
        """Whether the last write failed."""
        return self.failing_since is not None

    def blocked(self, now: float) -> bool:
        """Whether a write should not even be tried yet (an outage, before its next retry)."""
        return self.failing and now < self._retry_at

    def retry_after(self, now: float) -> int:
        """Whole seconds until the next write attempt (at least 1)."""
        return max(1, math.ceil(self._retry_at - now))

    def failed(self, exc: SQLAlchemyError, now: float, what: str) -> DatabaseUnavailable:
        """Record a failed write; return the error to raise to a client."""
        reason = describe_database_error(exc)
        self.failures += 1
        self._retry_at = now + self.retry_s
        if self.failing_since is None:
            self.failing_since = now
            events.log.error(
                "database unavailable",
                extra={"what": what, "reason": reason, "retry_s": self.retry_s},
            )
        return DatabaseUnavailable(reason, self.retry_after(now))

    def unavailable(self, now: float) -> DatabaseUnavailable:
        """The error for a request refused without trying (during an outage)."""
        return DatabaseUnavailable("the database refused recent writes", self.retry_after(now))

    def ok(self, now: float) -> None:
        """A write committed: close the outage, if any."""
        if self.failing_since is None:
            return
        events.log.warning(
            "database writable again",
            extra={
                "outage_s": round(now - self.failing_since, 3),
                "failed_writes": self.failures,
            },
        )
        self.failing_since, self.failures = None, 0
