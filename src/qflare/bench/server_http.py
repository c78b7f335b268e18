"""Many concurrent simulated nodes against a real server process over loopback HTTP.

The server runs as its own process (``uvicorn --factory qflare.server.app:app_from_env``), and
so does the enrollment authority it relays enrollments to; the nodes are asyncio tasks in this process, each with its own keys, session and
:class:`~qflare.sim.device.SimDevice`. Counts every non-2xx answer and exception as an error.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import numpy.typing as npt

from qflare.authority import AuthorityService, AuthoritySettings, init_authority
from qflare.crypto import HybridKem, MlDsa65Signer, SystemRng
from qflare.protocol import messages as m
from qflare.protocol.identity import (
    CertificateCache,
    decode_authority_key,
    enrollment_proof,
    parse_token,
)
from qflare.protocol.session import C2S, S2C, SecureChannel, ServerHello, SessionInitiator
from qflare.protocol.wire import EnrollRequest, EnrollResponse, SealedFrame, SecAggStep, Task
from qflare.sim.device import SimDevice

MSGPACK = {"content-type": "application/msgpack"}


@dataclass
class Tally:
    """Outcome counters shared by all simulated nodes."""

    errors: list[str] = field(default_factory=list)
    finished: int = 0
    requests: int = 0
    retries: int = 0


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tokens(directory: Path, count: int) -> list[str]:
    """Make an enrollment authority in ``directory`` and ``count`` tokens from it."""
    init_authority(directory, SystemRng())
    service = AuthorityService.open(
        AuthoritySettings(dir=directory), clock=time.time, rng=SystemRng()
    )
    try:
        return [service.create_token(3600, f"bench{i}")[1] for i in range(count)]
    finally:
        service.close()


def _enroll_request(token: str, signer: MlDsa65Signer, kem: HybridKem) -> EnrollRequest:
    signed = parse_token(token)
    ids = (signer.public_key, kem.public_key)
    return EnrollRequest(
        claims=signed.claims,
        signature=signed.signature,
        proof=enrollment_proof(signed.secret, signed.claims, "mldsa65", *ids),
        identity_pk=signer.public_key,
        kem_pk=kem.public_key,
    )


async def _post(
    http: httpx.AsyncClient, tally: Tally, path: str, body: bytes, session: str | None = None
) -> httpx.Response:
    tally.requests += 1
    headers = MSGPACK | ({"x-qflare-session": session} if session else {})
    r = await http.post(path, content=body, headers=headers)
    if r.status_code >= 300:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:200]}")
    return r


async def _session(
    http: httpx.AsyncClient, tally: Tally, device_id: str, signer: MlDsa65Signer, server_pk: bytes
) -> SecureChannel:
    init = SessionInitiator(device_id, signer, server_pk, SystemRng())
    r = await _post(
        http, tally, "/v1/sessions", msgspec.msgpack.encode(init.hello(now=time.time()))
    )
    finished, channel = init.finish(
        msgspec.msgpack.decode(r.content, type=ServerHello), now=time.time()
    )
    await _post(
        http, tally, f"/v1/sessions/{channel.session_id}/confirm", msgspec.msgpack.encode(finished)
    )
    return channel


async def _poll(http: httpx.AsyncClient, tally: Tally, channel: SecureChannel) -> Task | None:
    seq, tag = channel.seal(b"", now=time.time(), direction=C2S)
    headers = {
        "x-qflare-session": channel.session_id,
        "x-qflare-seq": str(seq),
        "x-qflare-auth": base64.b64encode(tag).decode(),
    }
    tally.requests += 1
    try:
        r = await http.get("/v1/tasks", params={"wait": 10}, headers=headers)
    except httpx.TransportError:  # a dropped keep-alive connection: polling again is safe
        tally.retries += 1
        return None
    if r.status_code == 204:
        return None
    if r.status_code != 200:
        raise RuntimeError(f"GET /v1/tasks: {r.status_code} {r.text[:200]}")
    frame = msgspec.msgpack.decode(r.content, type=SealedFrame)
    return msgspec.msgpack.decode(
        channel.open(frame.seq, frame.ciphertext, now=time.time(), direction=S2C), type=Task
    )


def _update(weights: npt.NDArray[np.float32], round_id: int) -> tuple[npt.NDArray[np.float32], int]:
    return np.full(weights.size, 0.001, dtype=np.float32), 1


_CACHE = CertificateCache()  # the simulated nodes of this process verify each peer once


async def _node(base: str, token: str, tally: Tally, deadline: float) -> None:
    signer, kem = MlDsa65Signer.generate(SystemRng()), HybridKem.generate(SystemRng())
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        req = _enroll_request(token, signer, kem)
        r = await _post(http, tally, "/v1/enroll", msgspec.msgpack.encode(req))
        enrolled = msgspec.msgpack.decode(r.content, type=EnrollResponse)
        channel = await _session(
            http, tally, enrolled.device_id, signer, enrolled.server_public_key
        )
        authority = decode_authority_key(enrolled.authority)
        device = SimDevice(enrolled.device_id, signer, _update, SystemRng(), authority, _CACHE)
        while time.time() < deadline:
            task = await _poll(http, tally, channel)
            if task is None:
                continue
            result = device.handle(task)
            seq, ct = channel.seal(msgspec.msgpack.encode(result), now=time.time(), direction=C2S)
            await _post(
                http,
                tally,
                "/v1/results",
                msgspec.msgpack.encode(
                    SealedFrame(session_id=channel.session_id, seq=seq, ciphertext=ct)
                ),
                session=channel.session_id,
            )
            body = task.body
            if isinstance(body, SecAggStep) and isinstance(
                m.decode_server(body.message), m.UnmaskRequest
            ):
                tally.finished += 1
                return


async def _run_nodes(base: str, tokens: list[str], tally: Tally, timeout_s: float) -> None:
    deadline = time.time() + timeout_s

    async def guarded(token: str) -> None:
        try:
            await _node(base, token, tally, deadline)
        except Exception as exc:  # every failure is counted, none is hidden
            tally.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    await asyncio.gather(*(guarded(t) for t in tokens))


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Block until ``base/v1/health`` answers (``RuntimeError`` if ``proc`` exits or time runs out)."""
    end = time.time() + timeout_s
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the process behind {base} exited during start-up")
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def _uvicorn(factory: str, port: int, nodes: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--timeout-keep-alive",
        "300",
        "--limit-concurrency",
        str(4 * nodes),
    ]
    return subprocess.Popen(cmd, env={**os.environ, **env})  # noqa: S603 - our own interpreter


def concurrent_round(nodes: int = 500, dim: int = 10_000, timeout_s: float = 600) -> dict[str, Any]:
    """Run ``nodes`` async nodes through one SecAgg+ round against a server subprocess.

    The enrollment authority runs as a second subprocess; the server relays enrollments to it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        authority_dir = Path(tmp) / "authority"
        tokens = make_tokens(authority_dir, nodes)
        authority_port, port = free_port(), free_port()
        authority = _uvicorn(
            "qflare.authority.app:app_from_env",
            authority_port,
            nodes,
            {"QFLARE_AUTHORITY_DIR": str(authority_dir)},
        )
        env = {
            "QFLARE_DATABASE_URL": f"sqlite:///{tmp}/server.sqlite",
            "QFLARE_STATE_DIR": str(Path(tmp) / "state"),
            "QFLARE_INSECURE": "true",
            "QFLARE_MODEL": f"vector:{dim}",
            "QFLARE_MIN_CLIENTS": str(nodes),
            "QFLARE_MAX_CLIENTS": str(nodes),
            "QFLARE_MAX_ROUNDS": "1",
            "QFLARE_STEP_TIMEOUT_S": "300",
            # Every node shares 127.0.0.1 here: the per-address limits for anonymous traffic
            # (enrollment and handshakes) would meter the whole fleet as one abusive client.
            "QFLARE_RATE_PER_IP": "100000",
            "QFLARE_MAX_UNAUTHENTICATED_PER_IP": str(nodes + 10),
            "QFLARE_MAX_UNAUTHENTICATED": str(2 * nodes + 10),
            "QFLARE_MAX_LONG_POLLS": str(nodes + 10),
            "QFLARE_LONG_POLL_MAX_S": "10",
            "QFLARE_AUTHORITY_URL": f"http://127.0.0.1:{authority_port}",
            "QFLARE_AUTHORITY_KEY": str(authority_dir / "authority.pub"),
        }
        proc = _uvicorn("qflare.server.app:app_from_env", port, nodes, env)
        base = f"http://127.0.0.1:{port}"
        tally = Tally()
        try:
            wait_ready(f"http://127.0.0.1:{authority_port}", authority)
            wait_ready(base, proc)
            t0 = time.perf_counter()
            asyncio.run(_run_nodes(base, tokens, tally, timeout_s))
            elapsed = time.perf_counter() - t0
            rounds = httpx.get(f"{base}/v1/rounds", timeout=10).json()
        finally:
            for child in (proc, authority):
                child.terminate()
                child.wait(timeout=30)
    return {
        "nodes": nodes,
        "dim": dim,
        "seconds": elapsed,
        "finished": tally.finished,
        "errors": len(tally.errors),
        "error_samples": tally.errors[:5],
        "requests": tally.requests,
        "poll_retries": tally.retries,
        "rounds": rounds,
    }
