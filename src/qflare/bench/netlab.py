"""A small network lab for ``qflare bench chronos-net``: one namespace per device, shaped links.

``NetLab`` makes a server namespace and one namespace per client, joins each client to the
server by its own veth pair, and shapes both directions with ``tc tbf`` (client uplink on the
client's end, client downlink on the server's end). Each client thus has a link of its own, as
the network model assumes. Delay is not applied here: this kernel lacks ``sch_netem``, so the
peers add the one-way delay in user space (see :mod:`qflare.bench.netpeer_io`).

Needs root and iproute2; :func:`netns_available` says whether this machine has both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from types import TracebackType

_BURST = "32kb"  # a few packets: shaping stays smooth at 20 Mbit/s
_QUEUE = "2s"  # deep enough that a 4 MB vector queues instead of dropping


def _run(tool: str, *args: str, check: bool = True) -> None:
    """Run ``ip`` or ``tc`` (absolute path, fixed argv, no shell)."""
    path = shutil.which(tool)
    if path is None:
        raise FileNotFoundError(f"{tool} is not installed")
    subprocess.run([path, *args], check=check, capture_output=True, text=True)  # noqa: S603


def _ip(*args: str) -> None:
    _run("ip", *args)


def _tbf(ns: str, dev: str, mbps: float) -> None:
    rate = f"{mbps * 1000:.0f}kbit"
    _run(
        "tc",
        "-n",
        ns,
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        rate,
        "burst",
        _BURST,
        "latency",
        _QUEUE,
    )


def netns_available() -> str | None:
    """``None`` if network namespaces with tbf shaping work here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"qfprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
        _ip("-n", probe, "link", "add", "qfp0", "type", "veth", "peer", "name", "qfp1")
        _tbf(probe, "qfp0", 20.0)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"network namespaces or tbf unavailable: {exc}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class NetLab:
    """Namespaces and shaped veth links for one run (a context manager that cleans up).

    Attributes:
        clients: Number of client namespaces.
        uplink_mbps: Client -> server rate.
        downlink_mbps: Server -> client rate.
    """

    clients: int
    uplink_mbps: float
    downlink_mbps: float
    prefix: str = field(default_factory=lambda: f"qf{os.getpid() % 100000}")
    _made: list[str] = field(default_factory=list)

    @property
    def server_ns(self) -> str:
        """The server's namespace."""
        return f"{self.prefix}s"

    def client_ns(self, u: int) -> str:
        """Client ``u``'s namespace."""
        return f"{self.prefix}c{u}"

    @staticmethod
    def server_addr(u: int) -> str:
        """The server's address on client ``u``'s link."""
        return f"10.{200 + u // 250}.{u % 250}.1"

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _link(self, u: int) -> None:
        ns, a, b = self.client_ns(u), f"{self.prefix}a{u}", f"{self.prefix}b{u}"
        _ip("-n", self.server_ns, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns)
        net = self.server_addr(u).rsplit(".", 1)[0]
        _ip("-n", self.server_ns, "addr", "add", f"{net}.1/30", "dev", a)
        _ip("-n", ns, "addr", "add", f"{net}.2/30", "dev", b)
        _ip("-n", self.server_ns, "link", "set", a, "up")
        _ip("-n", ns, "link", "set", b, "up")
        _tbf(ns, b, self.uplink_mbps)
        _tbf(self.server_ns, a, self.downlink_mbps)

    def __enter__(self) -> NetLab:
        try:
            self._add_ns(self.server_ns)
            for u in range(self.clients):
                self._add_ns(self.client_ns(u))
                self._link(u)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Delete every namespace made (their veth links go with them)."""
        for ns in reversed(self._made):
            _run("ip", "netns", "del", ns, check=False)
        self._made.clear()

    def in_ns(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return [shutil.which("ip") or "ip", "netns", "exec", ns, *argv]
