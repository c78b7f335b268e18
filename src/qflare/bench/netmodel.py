"""A stated network model and an emulating transport that replays measured protocol steps.

Compute is measured for real (each client and the server, per step). The network is not: a
step's messages are delivered on a virtual clock under :class:`NetworkModel`:

* every message pays half a round-trip time of propagation (so one request/response exchange
  costs one RTT), plus its size over the sender's link: client uplink for client->server
  messages, client downlink for server->client ones;
* clients run concurrently, each on its own device and link; the server's link is not the
  bottleneck (it is provisioned for all clients at once);
* a step closes when the last live client's message has arrived (dropouts are recognised at that
  moment: an optimistic deadline, the same for every protocol), then the server computes
  (handling the messages and advancing) and the next step's messages leave.

So one step costs ``max_u(down_u/downlink + compute_u + up_u/uplink) + RTT + server compute``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

_BITS = 8


@dataclass(frozen=True, slots=True)
class NetworkModel:
    """Per-message latency and per-client link bandwidths.

    Attributes:
        rtt_s: Round-trip time between a client and the server, in seconds.
        uplink_mbps: Client uplink, Mbit/s.
        downlink_mbps: Client downlink, Mbit/s.
    """

    rtt_s: float = 0.05
    uplink_mbps: float = 20.0
    downlink_mbps: float = 100.0

    def __post_init__(self) -> None:
        if self.rtt_s < 0 or self.uplink_mbps <= 0 or self.downlink_mbps <= 0:
            raise ValueError("RTT must be >= 0 and bandwidths > 0")

    def upload_s(self, nbytes: int) -> float:
        """Serialisation time of ``nbytes`` on the client uplink."""
        return nbytes * _BITS / (self.uplink_mbps * 1e6)

    def download_s(self, nbytes: int) -> float:
        """Serialisation time of ``nbytes`` on the client downlink."""
        return nbytes * _BITS / (self.downlink_mbps * 1e6)


@dataclass(frozen=True, slots=True)
class ClientLeg:
    """One client's part of a step: what it downloads, computes and uploads."""

    download_bytes: int
    compute_s: float
    upload_bytes: int


@dataclass(frozen=True, slots=True)
class Step:
    """One protocol step as measured: client legs (live clients only) and server compute."""

    name: str
    legs: Mapping[int, ClientLeg]
    server_s: float


@dataclass(frozen=True, slots=True)
class StepTiming:
    """Where one step's time went on the virtual clock.

    Attributes:
        name: Step name.
        duration_s: Total time of the step.
        critical_client: The client whose message arrived last (``None`` if nobody answered).
        propagation_s: RTT share.
        transfer_s: Download + upload time of the critical client.
        client_compute_s: Compute of the critical client.
        server_s: Server compute.
    """

    name: str
    duration_s: float
    critical_client: int | None
    propagation_s: float
    transfer_s: float
    client_compute_s: float
    server_s: float


@dataclass(frozen=True, slots=True)
class Timeline:
    """A replayed phase: its steps and their total."""

    steps: tuple[StepTiming, ...] = field(default_factory=tuple)

    @property
    def total_s(self) -> float:
        """End-to-end latency of the phase."""
        return sum(s.duration_s for s in self.steps)

    def totals(self) -> dict[str, float]:
        """Sum of each component over the steps."""
        return {
            "total_s": self.total_s,
            "propagation_s": sum(s.propagation_s for s in self.steps),
            "transfer_s": sum(s.transfer_s for s in self.steps),
            "client_compute_s": sum(s.client_compute_s for s in self.steps),
            "server_s": sum(s.server_s for s in self.steps),
        }


class EmulatedTransport:
    """Replays measured steps on a virtual clock with concurrently running clients.

    Args:
        model: The network model.
    """

    def __init__(self, model: NetworkModel) -> None:
        self.model = model

    def _leg_s(self, leg: ClientLeg) -> tuple[float, float]:
        """(arrival time after the step starts, transfer share) of one client's message."""
        transfer = self.model.download_s(leg.download_bytes) + self.model.upload_s(leg.upload_bytes)
        return self.model.rtt_s + transfer + leg.compute_s, transfer

    def step(self, step: Step) -> StepTiming:
        """Time of one step: the last client's arrival, then the server's compute."""
        arrivals = {u: self._leg_s(leg) for u, leg in step.legs.items()}
        if not arrivals:
            return StepTiming(step.name, step.server_s, None, 0.0, 0.0, 0.0, step.server_s)
        last = max(arrivals, key=lambda u: arrivals[u][0])
        arrive, transfer = arrivals[last]
        return StepTiming(
            name=step.name,
            duration_s=arrive + step.server_s,
            critical_client=last,
            propagation_s=self.model.rtt_s,
            transfer_s=transfer,
            client_compute_s=step.legs[last].compute_s,
            server_s=step.server_s,
        )

    def replay(self, steps: Iterable[Step], *, lead_server_s: float = 0.0) -> Timeline:
        """Replay ``steps`` in order; ``lead_server_s`` is server compute before the first one."""
        timings = [self.step(s) for s in steps]
        if lead_server_s:
            timings.insert(0, StepTiming("open", lead_server_s, None, 0.0, 0.0, 0.0, lead_server_s))
        return Timeline(tuple(timings))


def replay_all(
    steps: Sequence[Step], models: Sequence[NetworkModel], *, lead_server_s: float = 0.0
) -> list[Timeline]:
    """The same measured steps under several network models."""
    return [EmulatedTransport(m).replay(steps, lead_server_s=lead_server_s) for m in models]
