"""Connection-level limits: request heads in time, waiting connections capped.

uvicorn's HTTP/1.1 protocol (h11) waits for a request head without a deadline: a client that
opens a connection and sends nothing, or half a request line, holds it forever (slowloris).
:func:`guarded_h11` makes a subclass that

* gives every connection ``header_timeout_s`` to deliver a complete request head, counted from
  its opening and again from the end of each answer (which also bounds how long the unread rest
  of a refused body is drained), then closes it;
* counts a new connection among the unauthenticated ones (:class:`~qflare.server.limits.Inflight`,
  shared with the abuse guard) until its first request head is complete, and closes it at once
  when its client IP, or the server, is at the cap. (A kept-alive connection between requests is
  bounded by the keep-alive timeout and the head deadline instead.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from qflare.server.limits import Inflight

log = logging.getLogger("qflare.server")


def guarded_h11(header_timeout_s: float, unauthenticated: Inflight) -> type[H11Protocol]:
    """An :class:`H11Protocol` with a request-head deadline and a cap on waiting connections.

    Args:
        header_timeout_s: Time a connection gets to deliver a complete request head.
        unauthenticated: The count of unauthenticated connections (shared with the guard).
    """

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol; a request head is due in time, waiting connections capped."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_timer: asyncio.TimerHandle | None = None
            self._waiting = False  # counted among the unauthenticated connections
            self._refused = False
            self._ip = "unknown"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._ip = self.client[0] if self.client else "unknown"
            if not unauthenticated.acquire(self._ip):
                log.info("connection refused: too many unauthenticated connections")
                self._refused = True
                self.transport.close()
                return
            self._waiting = True
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            if self._in_request():
                self._head_arrived()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._in_request():
                self._arm()  # the next head (or the rest of a refused body) is due in time

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_arrived()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._late)

        def _head_arrived(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if self._waiting:
                self._waiting = False
                unauthenticated.release(self._ip)

        def _late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("connection closed: no complete request in time")
                self.transport.close()

    return GuardedH11Protocol
