"""Abuse limits: token buckets, caps on what is in flight, and bounded, timed request bodies.

* :class:`RateLimiter`: token buckets keyed by device (authenticated traffic) or by client IP
  (anonymous traffic); an empty bucket is a 429 ``rate_limited`` with ``Retry-After``.
* :class:`Inflight`: how many anonymous requests (or connections) are in progress, in all and per
  client IP, under caps.
* :func:`read_body`: the one way a route reads its body: ``application/msgpack`` only (415),
  at most ``limit`` bytes (413 ``body_too_large``, refused from ``Content-Length`` before a byte
  is read), and in time (408 ``body_timeout``: ``timeout_s`` between two chunks, and
  ``timeout_s + length / min_rate`` in all, so a trickle cannot hold a connection).
* :func:`result_body_limit`: the largest honest ``POST /v1/results`` body for a model of ``d``
  parameters, so the limit follows the federation's model instead of a fixed size.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

from fastapi import Request
from starlette.requests import ClientDisconnect

from qflare.server.errors import ApiError

MSGPACK = "application/msgpack"
RING_BYTES = 4  # one uint32 ring element per model parameter (32-bit modulus)
RESULT_BASE_BYTES = 256 * 1024  # signatures, attestation evidence, framing
PEER_BYTES = 1024  # per cohort member: an encrypted share pair, a commitment, framing
PEER_ROUND_BYTES = 256  # CHRONOS: shares for every round of the epoch, per cohort member


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
        """Take one token for ``key`` (``kind:value``, e.g. ``ip:10.0.0.1``).

        Raises:
            ApiError: the bucket is empty (429 ``rate_limited`` with ``Retry-After``).
        """
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.rate, now))
            tokens = min(self.rate, tokens + max(0.0, now - last) * self.rate)
            self._buckets[key] = (tokens - 1.0, now) if tokens >= 1.0 else (tokens, now)
            while len(self._buckets) > self._capacity:
                self._buckets.popitem(last=False)
        if tokens < 1.0:
            wait = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests for this {key.split(':')[0]}; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )


class Inflight:
    """Requests (or connections) in progress, in all and per key, under two caps.

    Only used from the event loop's thread.

    Args:
        total: Most in progress at once.
        per_key: Most in progress at once for one key (a client IP).
    """

    def __init__(self, total: int, per_key: int) -> None:
        self.total, self.per_key = total, per_key
        self._count = 0
        self._by_key: defaultdict[str, int] = defaultdict(int)

    def acquire(self, key: str) -> bool:
        """Count one more for ``key``; ``False`` (and nothing counted) if a cap is reached."""
        if self._count >= self.total or self._by_key[key] >= self.per_key:
            return False
        self._count += 1
        self._by_key[key] += 1
        return True

    def release(self, key: str) -> None:
        """Count one less for ``key``."""
        self._count -= 1
        left = self._by_key[key] - 1
        if left > 0:
            self._by_key[key] = left
        else:
            del self._by_key[key]

    def __len__(self) -> int:
        return self._count


@dataclass(frozen=True)
class BodyLimits:
    """Sizes and pace of request bodies (from the settings and the federation's model).

    Attributes:
        enroll: Bytes of an enrollment.
        session: Bytes of a handshake message.
        results: Bytes of a result frame.
        timeout_s: Longest wait for the next chunk of a body (and the grace of a whole body).
        min_rate: Slowest accepted upload, bytes per second, after the grace.
    """

    enroll: int
    session: int
    results: int
    timeout_s: float
    min_rate: float


def result_body_limit(dim: int, max_clients: int, rounds_per_epoch: int = 1) -> int:
    """The largest honest result frame for ``dim`` parameters and cohorts of ``max_clients``.

    A masked input is ``4·dim`` bytes; share messages grow with the cohort (and, in CHRONOS,
    with the rounds of an epoch); signatures, attestation evidence and framing fit in a fixed
    allowance.
    """
    per_peer = PEER_BYTES + PEER_ROUND_BYTES * rounds_per_epoch
    return RING_BYTES * dim + max_clients * per_peer + RESULT_BASE_BYTES


def _check_media_type(request: Request) -> None:
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != MSGPACK:
        raise ApiError(
            415, "unsupported_media_type", f"send the body as {MSGPACK}, not {kind or 'nothing'}"
        )


def _declared_length(request: Request, limit: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise ApiError(413, "body_too_large", f"body of {declared} bytes exceeds {limit}")
    return int(declared)


async def read_body(request: Request, limit: int, bodies: BodyLimits) -> bytes:
    """Read a msgpack request body: typed, bounded and in time.

    Raises:
        ApiError: not msgpack (415), too large (413), too slow (408), empty (400).
        ClientDisconnect: the client left before the body was complete.
    """
    _check_media_type(request)
    expected = _declared_length(request, limit)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bodies.timeout_s + (expected or limit) / bodies.min_rate
    chunks, size, more = [], 0, True
    while more:
        wait = min(bodies.timeout_s, deadline - loop.time())
        try:
            message = await asyncio.wait_for(request.receive(), timeout=max(wait, 0.0))
        except TimeoutError:
            raise ApiError(
                408,
                "body_timeout",
                f"the body did not arrive in time ({size} bytes read)",
                headers={"Connection": "close"},  # RFC 9110 §15.5.9
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    if size == 0:
        raise ApiError(400, "empty_body", "empty body")
    return b"".join(chunks)
