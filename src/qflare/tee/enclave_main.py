"""Entry point of the simulated enclave process: ``python -m qflare.tee.enclave_main FD``.

``FD`` is one end of a socket pair inherited from the host. The process reads one boot frame,
loads the trusted application, then answers one request per frame until it is told to shut
down or the host goes away. Nothing but :mod:`qflare.tee.wire` frames is ever written to it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection

import msgspec

from qflare.crypto import SystemRng
from qflare.tee import wire
from qflare.tee.errors import TeeError
from qflare.tee.runtime import EnclaveRuntime


def _boot(conn: Connection) -> EnclaveRuntime | None:
    try:
        request = wire.decode_request(conn.recv_bytes())
        if not isinstance(request, wire.BootRequest):
            raise ValueError("the first frame must be a BootRequest")
        runtime = EnclaveRuntime(request, SystemRng())
    except (TeeError, ValueError, OSError, ImportError, msgspec.MsgspecError) as exc:
        failure = wire.FailureResponse(kind="EnclaveError", message=f"boot failed: {exc}")
        conn.send_bytes(wire.encode(failure))
        return None
    except Exception as exc:  # a TA's build() failed: report its type only
        failure = wire.FailureResponse(
            kind="EnclaveError", message=f"boot failed: {type(exc).__name__}"
        )
        conn.send_bytes(wire.encode(failure))
        return None
    conn.send_bytes(wire.encode(runtime.boot_response()))
    return runtime


def _answer(runtime: EnclaveRuntime, frame: bytes) -> tuple[wire.Response, bool]:
    try:
        request = wire.decode_request(frame)
    except (ValueError, msgspec.MsgspecError):
        return wire.FailureResponse(kind="EnclaveError", message="malformed request"), False
    if isinstance(request, wire.ShutdownRequest):
        return wire.OkResponse(), True
    return runtime.handle(request), False


def serve(conn: Connection) -> None:
    """Boot, then answer requests on ``conn`` until shutdown or end of file."""
    runtime = _boot(conn)
    if runtime is None:
        return
    done = False
    while not done:
        try:
            frame = conn.recv_bytes()
        except EOFError:
            return
        response, done = _answer(runtime, frame)
        conn.send_bytes(wire.encode(response))


def main(argv: Sequence[str]) -> int:
    """Serve on the inherited file descriptor ``argv[0]``."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m qflare.tee.enclave_main FD", file=sys.stderr)
        return 2
    conn = Connection(int(argv[0]))
    try:
        serve(conn)
    except (BrokenPipeError, ConnectionResetError):
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
