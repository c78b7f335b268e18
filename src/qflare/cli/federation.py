"""A whole federation on this machine: a TLS server process and N node processes.

Used by ``qflare demo`` and by the multi-process integration tests. Everything goes through the
real command line (``qflare authority init|serve|token create``, ``qflare certs init``, ``qflare
server``, ``qflare node enroll``, ``qflare node run``), so what runs here is exactly what an
operator runs. The enrollment authority is its own process with its own directory: the server
gets only ``authority.pub`` and the authority's URL. With ``witnesses=W`` it also runs W ledger
witnesses (``qflare ledger server-key``, ``qflare witness init``, ``qflare witness serve``) that
the server and the nodes use with a quorum of all W.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalFederation:
    """Server + nodes as child processes under ``workdir``.

    Attributes:
        workdir: Holds the server's database, keys, TLS files and each node's state.
        settings: Server settings written to ``server.json`` (``qflare server --config``).
        port: Server port (a free one by default).
        witnesses: Ledger witness processes to run beside the server (0: none).
    """

    workdir: Path
    settings: dict[str, Any]
    port: int = field(default_factory=free_port)
    authority_port: int = field(default_factory=free_port)
    authority: subprocess.Popen[bytes] | None = None
    server: subprocess.Popen[bytes] | None = None
    nodes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    witnesses: int = 0
    witness_ports: list[int] = field(default_factory=list)
    witness_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        """The CA certificate nodes pin."""
        return self.workdir / "server" / "tls" / "ca.pem"

    @property
    def authority_dir(self) -> Path:
        """The enrollment authority's directory (``authority.key`` is the one kept offline)."""
        return self.workdir / "authority"

    @property
    def config(self) -> Path:
        """The server's settings file."""
        return self.workdir / "server.json"

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def _qflare(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "qflare.cli", *args]

    def _run(self, *args: str) -> str:
        out = subprocess.run(self._qflare(*args), capture_output=True, text=True, check=False)  # noqa: S603
        if out.returncode != 0:
            raise RuntimeError(f"qflare {' '.join(args[:2])} failed: {out.stderr[-2000:]}")
        return out.stdout

    def prepare(self) -> None:
        """Make the authority key, write the settings file, make the CA and server certificate."""
        (self.workdir / "server").mkdir(parents=True, exist_ok=True, mode=0o700)
        self._run("authority", "init", "--dir", str(self.authority_dir))
        base = {
            "database_url": f"sqlite:///{self.workdir / 'server' / 'qflare.sqlite'}",
            "state_dir": str(self.workdir / "server"),
            "port": self.port,
            "host": "127.0.0.1",
            "authority_url": f"http://127.0.0.1:{self.authority_port}",
            "authority_key": str(self.authority_dir / "authority.pub"),
        }
        witnesses = self._witness_settings() if self.witnesses else {}
        self.config.write_text(json.dumps({**base, **witnesses, **self.settings}, indent=2))
        self._run("certs", "init", "--config", str(self.config), "--hosts", "localhost,127.0.0.1")

    def start_authority(self) -> None:
        """Start ``qflare authority serve`` and wait until it answers."""
        out = open(self.workdir / "authority.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = self._qflare(
            "authority",
            "serve",
            "--dir",
            str(self.authority_dir),
            "--port",
            str(self.authority_port),
        )
        self.authority = subprocess.Popen(cmd, stdout=out, stderr=out)  # noqa: S603
        end = time.time() + 60
        while self.authority.poll() is None and time.time() < end:
            try:
                url = f"http://127.0.0.1:{self.authority_port}/v1/health"
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the authority did not start; see {self.workdir / 'authority.log'}")

    def start_server(self, log: Path | None = None) -> None:
        """Start (or restart) the server process (and the authority, once); wait until it answers."""
        if self.authority is None:
            self.start_authority()
        out = open(log or self.workdir / "server.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = self._qflare("server", "--config", str(self.config))
        self.server = subprocess.Popen(cmd, stdout=out, stderr=out)  # noqa: S603
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Block until ``/v1/health`` answers over TLS."""
        end = time.time() + timeout_s
        while time.time() < end:
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.server.returncode}; see {self.workdir / 'server.log'}"
                )
            try:
                if (
                    httpx.get(f"{self.url}/v1/health", verify=self._tls(), timeout=2).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError("server did not become ready")

    def tokens(self, count: int, label: str = "node") -> list[str]:
        """``count`` single-use enrollment tokens, made by one ``qflare authority token`` call."""
        out = self._run(
            "authority",
            "token",
            "create",
            "--dir",
            str(self.authority_dir),
            "--expires",
            "1h",
            "--label",
            label,
            "--count",
            str(count),
        )
        return out.split()

    def enroll(self, index: int, scheme: str = "mldsa65", token: str | None = None) -> Path:
        """Enroll node ``index`` (node CLI) with ``token``, or a fresh one from the authority."""
        token = token or self.tokens(1, f"node{index}")[0]
        state = self.workdir / f"node{index}"
        self._run(
            "node",
            "enroll",
            "--server",
            self.url,
            "--token",
            token,
            "--ca",
            str(self.ca),
            "--state-dir",
            str(state),
            "--scheme",
            scheme,
        )
        return state

    def enroll_all(self, indices: Sequence[int], scheme: str = "mldsa65") -> list[Path]:
        """Enroll several nodes: one token call, then the ``qflare node enroll`` runs side by side."""
        tokens = self.tokens(len(indices))
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(
                pool.map(
                    lambda it: self.enroll(it[0], scheme, it[1]), zip(indices, tokens, strict=True)
                )
            )

    def start_node(self, index: int, *args: str) -> None:
        """Start ``qflare node run`` for an enrolled node."""
        log = open(self.workdir / f"node{index}.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = self._qflare("node", "run", "--state-dir", str(self.workdir / f"node{index}"), *args)
        self.nodes[index] = subprocess.Popen(cmd, stdout=log, stderr=log)  # noqa: S603

    def rounds(self) -> list[dict[str, Any]]:
        """``GET /v1/rounds``."""
        data: list[dict[str, Any]] = httpx.get(
            f"{self.url}/v1/rounds", verify=self._tls(), timeout=10
        ).json()
        return data

    def wait_rounds(self, completed: int, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until ``completed`` rounds have completed (ids ascending)."""
        end = time.time() + timeout_s
        while time.time() < end:
            try:
                done = [r for r in self.rounds() if r["state"] == "COMPLETED"]
            except httpx.HTTPError:
                done = []
            if len(done) >= completed:
                return sorted(done, key=lambda r: int(r["id"]))
            time.sleep(0.5)
        raise TimeoutError(f"fewer than {completed} rounds completed in {timeout_s} s")

    def kill_server(self) -> None:
        """SIGKILL the server (no clean shutdown)."""
        if self.server is not None:
            self.server.send_signal(signal.SIGKILL)
            self.server.wait(timeout=30)
            self.server = None

    # ---- ledger witnesses ----------------------------------------------------------------------

    def witness_key(self, index: int) -> Path:
        """Public key file of witness ``index``."""
        return self.workdir / f"witness{index}" / "witness.pub"

    def witness_args(self, quorum_option: str = "--witness-quorum") -> list[str]:
        """Options trusting every witness, with a quorum of all of them (none without witnesses).

        Args:
            quorum_option: ``--witness-quorum`` (``qflare node run``) or ``--quorum``
                (``qflare ledger verify``).
        """
        args = []
        for i in range(self.witnesses):
            args += ["--witness-key", str(self.witness_key(i))]
        return [*args, quorum_option, str(self.witnesses)] if self.witnesses else []

    def _witness_settings(self) -> dict[str, Any]:
        self.witness_ports = [free_port() for _ in range(self.witnesses)]
        return {
            "witness_urls": [f"http://127.0.0.1:{p}" for p in self.witness_ports],
            "witness_keys": [str(self.witness_key(i)) for i in range(self.witnesses)],
            "witness_quorum": self.witnesses,
            "witness_interval_s": 0.5,
        }

    def start_witnesses(self) -> None:
        """Make the witnesses' keys, pin the server's ledger key, start them (before the server)."""
        server_key = self.workdir / "server" / "ledger-key.pub"
        self._run("ledger", "server-key", "--config", str(self.config), "--out", str(server_key))
        for i, port in enumerate(self.witness_ports):
            directory = self.witness_key(i).parent
            if not directory.exists():
                self._run("witness", "init", "--dir", str(directory))
            log = open(self.workdir / f"witness{i}.log", "ab")  # noqa: SIM115 - owned by the child
            cmd = self._qflare(
                "witness", "serve", "--dir", str(directory), "--server-key", str(server_key)
            )
            proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=log, stderr=log)  # noqa: S603
            self.witness_procs.append(proc)
        for port in self.witness_ports:
            self._wait_http(f"http://127.0.0.1:{port}/v1/health", "a witness", 60)

    def _wait_http(self, url: str, what: str, timeout_s: float) -> None:
        end = time.time() + timeout_s
        while time.time() < end:
            if any(p.poll() is not None for p in self.witness_procs):
                raise RuntimeError(f"{what} exited; see {self.workdir}/witness*.log")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{what} did not become ready")

    def cosigned_head(self, timeout_s: float = 20) -> dict[str, Any]:
        """``GET /v1/ledger/head`` once the witnesses have cosigned every entry the server holds."""
        end = time.time() + timeout_s
        while True:
            head: dict[str, Any] = httpx.get(
                f"{self.url}/v1/ledger/head", verify=self._tls(), timeout=10
            ).json()
            size = httpx.get(
                f"{self.url}/v1/ledger/entries",
                params={"start": head["tree_size"]},
                verify=self._tls(),
                timeout=10,
            ).json()["tree_size"]
            done = len(head["cosignatures"]) >= self.witnesses and head["tree_size"] == size
            if done or time.time() > end:
                return head
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop every child: nodes, then the server, the witnesses and the authority."""
        servers = [p for p in (self.server, *self.witness_procs, self.authority) if p is not None]
        for proc in [*self.nodes.values(), *servers]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.nodes.values(), *servers]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
