"""Framed TCP links for the real-socket benchmark, with a one-way delay added on receipt.

A frame is ``length (4 bytes, big endian) || kind (1 byte) || payload``. Each receiver hands a
frame to the application ``owd_s`` seconds after its last byte arrived: that is the propagation
half of a round trip, added in user space because this machine's kernel has no ``sch_netem``.
Bandwidth is not emulated here: the kernel shapes it (``tc tbf`` on the veth links).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from dataclasses import dataclass

HELLO, MSG, SECAGG, EPOCH, IDLE, ACK, BYE = (bytes([c]) for c in b"HPSEIAQ")
_HEADER = 5
_MAX_FRAME = 1 << 30


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """Encode one frame."""
    return len(payload).to_bytes(4, "big") + kind + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one frame: ``(kind, payload)``."""
    header = await reader.readexactly(_HEADER)
    length = int.from_bytes(header[:4], "big")
    if length > _MAX_FRAME:
        raise ValueError("frame too large")
    return header[4:5], await reader.readexactly(length)


@dataclass(frozen=True, slots=True)
class Inbound:
    """A frame handed to the application: who sent it (server side), its kind and payload."""

    sender: int
    kind: bytes
    payload: bytes


def no_delay(writer: asyncio.StreamWriter) -> None:
    """Send small frames at once (Nagle off)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def pump(
    reader: asyncio.StreamReader, sender: int, owd_s: float, inbox: asyncio.Queue[Inbound]
) -> None:
    """Read frames until EOF; deliver each one ``owd_s`` after it fully arrived (FIFO kept)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            kind, payload = await read_frame(reader)
            loop.call_later(owd_s, inbox.put_nowait, Inbound(sender, kind, payload))
    except (asyncio.IncompleteReadError, ConnectionError):
        return


class Hub:
    """The server's side: one framed connection per client.

    Args:
        owd_s: One-way delay added to every received frame.
    """

    def __init__(self, owd_s: float) -> None:
        self.owd_s = owd_s
        self.inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._joined = asyncio.Event()
        self._expected = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        no_delay(writer)
        kind, payload = await read_frame(reader)
        if kind != HELLO or len(payload) != 4:
            writer.close()
            return
        client = int.from_bytes(payload, "big")
        self._writers[client] = writer
        task = asyncio.create_task(pump(reader, client, self.owd_s, self.inbox))
        self._tasks.add(task)
        if len(self._writers) >= self._expected:
            self._joined.set()

    async def serve(self, host: str, port: int, clients: int) -> asyncio.Server:
        """Listen; :meth:`joined` returns once ``clients`` clients said hello."""
        self._expected = clients
        return await asyncio.start_server(self._on_connect, host, port)

    async def joined(self) -> None:
        """Wait for every client."""
        await self._joined.wait()

    async def send(self, frames: Mapping[int, bytes]) -> None:
        """Write every client's frame, then wait until all are handed to the kernel."""
        writers = [self._writers[u] for u in frames]
        for u, data in frames.items():
            self._writers[u].write(data)
        await asyncio.gather(*(w.drain() for w in writers))

    async def close(self) -> None:
        """Say goodbye to every client and close."""
        await self.send({u: frame(BYE) for u in self._writers})
        for writer in self._writers.values():
            writer.close()
        for task in self._tasks:
            task.cancel()
