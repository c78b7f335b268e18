"""Sessions live only in server memory: handshakes in flight and established channels."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from qflare.protocol.errors import RemoteProtocolError
from qflare.protocol.session import SecureChannel, SessionResponder
from qflare.server.errors import ApiError


def unknown_session() -> ApiError:
    """The answer to a request that names no live session: handshake again."""
    return ApiError(401, "session_unknown", "unknown or expired session; open a new one")


@dataclass
class LiveSession:
    """An established session of one device."""

    device_id: str
    channel: SecureChannel


class SessionTable:
    """Bounded tables of pending handshakes and live sessions (oldest evicted first).

    Args:
        capacity: Maximum live sessions (and pending handshakes).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._pending: OrderedDict[str, SessionResponder] = OrderedDict()
        self._live: OrderedDict[str, LiveSession] = OrderedDict()
        self._lock = threading.Lock()

    def add_pending(self, session_id: str, responder: SessionResponder) -> None:
        """Remember a handshake waiting for its confirmation."""
        with self._lock:
            self._pending[session_id] = responder
            while len(self._pending) > self._capacity:
                self._pending.popitem(last=False)

    def take_pending(self, session_id: str) -> SessionResponder:
        """Remove and return a pending handshake.

        Raises:
            RemoteProtocolError: unknown session (404).
        """
        with self._lock:
            responder = self._pending.pop(session_id, None)
        if responder is None:
            raise RemoteProtocolError("unknown handshake", state="START", http_status=404)
        return responder

    def establish(self, session: LiveSession) -> None:
        """Store an established session."""
        with self._lock:
            self._live[session.channel.session_id] = session
            while len(self._live) > self._capacity:
                self._live.popitem(last=False)

    def is_live(self, session_id: str, now: float) -> bool:
        """Whether ``session_id`` names an established, unexpired session (nothing raised)."""
        with self._lock:
            live = self._live.get(session_id)
        return live is not None and live.channel.expires_at > now

    def get(self, session_id: str, now: float) -> LiveSession:
        """An established, unexpired session.

        Raises:
            ApiError: unknown or expired session (401 ``session_unknown``).
        """
        with self._lock:
            live = self._live.get(session_id)
            if live is not None and live.channel.expires_at <= now:
                del self._live[session_id]
                live = None
        if live is None:
            raise unknown_session()
        return live

    def drop_device(self, device_id: str) -> None:
        """Forget every session of a (revoked) device."""
        with self._lock:
            for sid in [s for s, v in self._live.items() if v.device_id == device_id]:
                del self._live[sid]
