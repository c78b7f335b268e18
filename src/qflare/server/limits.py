"""Abuse limits: token-bucket rate limits and capped request bodies."""

from __future__ import annotations

import threading
from collections import OrderedDict

from fastapi import Request

from qflare.protocol.errors import RemoteProtocolError


class RateLimiter:
    """Token buckets keyed by device id or client IP (bounded memory, LRU eviction).

    Args:
        rate: Tokens added per second (also the burst size).
        capacity: Number of keys remembered.
    """

    def __init__(self, rate: float, capacity: int = 100_000) -> None:
        self.rate = rate
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def check(self, key: str, now: float) -> None:
        """Take one token for ``key``.

        Raises:
            RemoteProtocolError: the bucket is empty (429).
        """
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.rate, now))
            tokens = min(self.rate, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RemoteProtocolError(
                    f"rate limit exceeded for {key.split(':')[0]}", state="HTTP", http_status=429
                )
            self._buckets[key] = (tokens - 1.0, now)
            while len(self._buckets) > self._capacity:
                self._buckets.popitem(last=False)


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing more than ``limit`` bytes (413) before buffering it all.

    Raises:
        RemoteProtocolError: body too large (413) or empty (400).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RemoteProtocolError(
            f"body of {declared} bytes exceeds {limit}", state="HTTP", http_status=413
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RemoteProtocolError(f"body exceeds {limit} bytes", state="HTTP", http_status=413)
        chunks.append(chunk)
    if size == 0:
        raise RemoteProtocolError("empty body", state="HTTP", http_status=400)
    return b"".join(chunks)
