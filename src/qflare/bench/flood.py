"""A paced flood of bad requests over raw loopback sockets (the attacker of ``bench abuse``).

Requests are built once (forged polls, results for unknown sessions, hellos from unknown
devices, enrollments with forged tokens: every one of them anonymous) and sent over a few
kept-alive HTTP/1.1 connections on an open-loop schedule: request ``i`` leaves at
``t0 + i / rate`` whether or not the earlier ones were answered (HTTP/1.1 pipelining), so the
offered load does not fall when the server slows down; only TCP backpressure can hold the
attacker back, and ``rate_per_s`` reports what was really sent. A connection the server closes
is reopened. Only the status line, the headers and ``Content-Length`` bytes of each answer are
read, so the attacker stays cheap next to the server it loads.

Traffic goes to ``127.0.0.1`` only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from qflare.protocol.session import ClientHello
from qflare.protocol.wire import EnrollRequest, SealedFrame

HOST = "127.0.0.1"
_MSGPACK = b"Content-Type: application/msgpack\r\n"


@dataclass(frozen=True)
class FloodConfig:
    """What the attacker sends.

    Attributes:
        port: The server's port on 127.0.0.1.
        rate: Requests per second to aim at.
        seconds: How long to send.
        connections: Kept-alive connections to spread the requests over.
    """

    port: int
    rate: float = 2000.0
    seconds: float = 30.0
    connections: int = 32


@dataclass
class FloodReport:
    """What the attacker saw.

    Attributes:
        sent: Requests sent.
        answered: Requests answered (status line read).
        statuses: Answers per status code.
        reconnects: Connections reopened after the server closed them.
        errors: Connections that could not be opened.
        seconds: Time from the first request to the last answer.
        sending_s: Time from the first request to the last one sent.
        latencies_ms: A sample of answer times.
    """

    sent: int = 0
    answered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    reconnects: int = 0
    errors: int = 0
    seconds: float = 0.0
    sending_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (rate achieved, status counts, latency percentiles)."""
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

        return {
            "sent": self.sent,
            "answered": self.answered,
            "unanswered": self.sent - self.answered,
            "sent_per_s": round(self.sent / self.sending_s, 1) if self.sending_s else 0.0,
            "answered_per_s": round(self.answered / self.seconds, 1) if self.seconds else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "reconnects": self.reconnects,
            "connection_errors": self.errors,
            "latency_ms_p50": pct(0.5),
            "latency_ms_p99": pct(0.99),
        }


def _request(method: str, path: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n".encode() + headers
    if body:
        head += _MSGPACK + f"Content-Length: {len(body)}\r\n".encode()
    return head + b"\r\n" + body


def bad_requests() -> list[bytes]:
    """One of each kind of bad-token request, ready to send."""
    session = os.urandom(16).hex()
    poll = (
        f"X-QFLARE-Session: {session}\r\nX-QFLARE-Seq: 1\r\n"
        f"X-QFLARE-Auth: {base64.b64encode(os.urandom(16)).decode()}\r\n"
    ).encode()
    frame = SealedFrame(session_id=session, seq=1, ciphertext=os.urandom(256))
    hello = ClientHello(
        device_id=os.urandom(8).hex(),
        nonce=os.urandom(32),
        kem_pk=os.urandom(1216),
        timestamp=time.time(),
        signature=os.urandom(3309),
    )
    enroll = EnrollRequest(
        claims=os.urandom(96),
        signature=os.urandom(3309),
        proof=os.urandom(32),
        identity_pk=os.urandom(1952),
        kem_pk=os.urandom(1216),
    )
    encode = msgspec.msgpack.encode
    return [
        _request("GET", "/v1/tasks?wait=0", poll),
        _request("POST", "/v1/results", f"X-QFLARE-Session: {session}\r\n".encode(), encode(frame)),
        _request("POST", "/v1/sessions", body=encode(hello)),
        _request("POST", "/v1/enroll", body=encode(enroll)),
    ]


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the server closes the connection) of one answer."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


Stop = Callable[[], bool]


class _Pipe:
    """One connection: requests written on schedule, answers read as they come (pipelining)."""

    def __init__(self, report: FloodReport) -> None:
        self.report = report
        self.sent_at: deque[float] = deque()

    async def read(self, reader: asyncio.StreamReader) -> None:
        """Count answers until the server closes the connection (or says it will)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                status, close = await _read_answer(reader)
                sent_at = self.sent_at.popleft() if self.sent_at else loop.time()
                self.report.answered += 1
                self.report.statuses[status] += 1
                if self.report.answered % 16 == 0:
                    self.report.latencies_ms.append((loop.time() - sent_at) * 1e3)
                if close:
                    self.report.reconnects += 1
                    return
        except (OSError, asyncio.IncompleteReadError, ValueError):
            return


async def _connection(
    cfg: FloodConfig, index: int, requests: list[bytes], t0: float, report: FloodReport, stop: Stop
) -> None:
    """Send this connection's share of the schedule, reopening the connection when it closes."""
    step = cfg.connections / cfg.rate
    end, slot = t0 + cfg.seconds, t0 + index / cfg.rate
    loop = asyncio.get_running_loop()
    i = index
    while slot < end and not stop():
        try:
            reader, writer = await asyncio.open_connection(HOST, cfg.port)
        except OSError:
            report.errors += 1
            await asyncio.sleep(0.05)
            continue
        pipe = _Pipe(report)
        reading = asyncio.create_task(pipe.read(reader))
        try:
            while slot < end and not stop() and not reading.done():
                delay = slot - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                slot += step
                writer.write(requests[i % len(requests)])
                pipe.sent_at.append(loop.time())
                i += 1
                report.sent += 1
                report.sending_s = loop.time() - t0
                await writer.drain()  # TCP backpressure when the server falls behind
            await asyncio.wait_for(asyncio.shield(reading), timeout=2.0)  # the last answers
        except (OSError, TimeoutError):
            pass  # answers still owed are counted as unanswered
        finally:
            reading.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def flood(cfg: FloodConfig, stop: Stop = lambda: False) -> FloodReport:
    """Send the flood until its time is up or ``stop()``; return what the attacker saw."""
    report, requests = FloodReport(), bad_requests()
    t0 = asyncio.get_running_loop().time()
    await asyncio.gather(
        *(_connection(cfg, i, requests, t0, report, stop) for i in range(cfg.connections))
    )
    report.seconds = asyncio.get_running_loop().time() - t0
    return report


def flood_summary(cfg: FloodConfig, stop: Stop = lambda: False) -> dict[str, Any]:
    """Run :func:`flood` in a fresh event loop (a process or thread of its own)."""
    return asyncio.run(flood(cfg, stop)).summary()
