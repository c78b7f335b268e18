"""In-memory stand-ins: enrolled node states and a hub that plays the coordinator's part."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qflare.crypto import DeterministicRng, SignatureScheme, verify_signature
from qflare.node import DeviceRecord, NodeState
from qflare.protocol import messages as m
from qflare.protocol.errors import ProtocolError
from qflare.protocol.identity import encode_authority_key
from qflare.protocol.secagg import SecAggServer, State
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    SecAggStart,
    SecAggStep,
    SignedResult,
    Task,
    decode_notice,
    result_transcript,
)
from qflare.sim.identities import SimAuthority

SERVER_KEY = b"\x01" * 32
AUTHORITY = SimAuthority(DeterministicRng(b"node tests authority"))


def make_state(root: Path, device_id: str, seed: int = 0, index: int | None = None) -> NodeState:
    """An enrolled node state: client ``index`` (default ``seed``), certified by AUTHORITY."""
    state = NodeState.create(root, SignatureScheme.ED25519, DeterministicRng(seed + 1))
    state.save_device(
        DeviceRecord(
            device_id=device_id,
            server_url="http://127.0.0.1:9",
            server_public_key=SERVER_KEY,
            server_scheme="ed25519",
            authority=encode_authority_key(AUTHORITY.key),
            certificate=AUTHORITY.certify(seed if index is None else index, state.signer()),
        )
    )
    return state


@dataclass
class FakeHub:
    """One SecAgg round driven like the server's coordinator (no HTTP, no sessions)."""

    identities: dict[int, bytes]
    devices: dict[str, int]
    dim: int = 12
    round_id: int = 1
    clip: float = 1.0
    max_total_weight: int = 1000
    t: int | None = None
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    step: int = 0
    outbox: dict[int, bytes] = field(default_factory=dict)
    accepted: list[SignedResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.identities)
        self.cfg = m.RoundConfig(
            session="qflare",
            round_id=self.round_id,
            participants=tuple(sorted(self.identities)),
            k=n,
            t=self.t or n,
            dim=self.dim + 1,
            signature_scheme="ed25519",
        )
        self.certificates = {
            i: AUTHORITY.certify_key(i, SignatureScheme.ED25519, pk)
            for i, pk in self.identities.items()
        }
        self.machine = SecAggServer(self.cfg, self.identities)
        if self.weights.size == 0:
            self.weights = np.linspace(-1, 1, self.dim, dtype=np.float32)

    def start(self, index: int) -> SecAggStart:
        return SecAggStart(
            config=self.cfg,
            client_index=index,
            certificates=self.certificates,
            model_version=0,
            weights=self.weights.tobytes(),
            clip=self.clip,
            max_total_weight=self.max_total_weight,
            deadline=1e12,
        )

    def task_for(self, device_id: str) -> Task | None:
        index = self.devices[device_id]
        if self.machine.state in (State.COMPLETED, State.ABORTED):
            return None
        if index not in self.machine.pending():
            return None
        if self.step == 0:
            return Task(round_id=self.round_id, step=0, body=self.start(index))
        message = self.outbox.get(index)
        return (
            None
            if message is None
            else Task(round_id=self.round_id, step=self.step, body=SecAggStep(message=message))
        )

    def submit(self, result: SignedResult) -> None:
        index = self.devices[result.device_id]
        self.notices = getattr(self, "notices", [])
        transcript = result_transcript(
            result.device_id, result.round_id, result.step, result.message
        )
        verify_signature(
            SignatureScheme.ED25519,
            self.identities[index],
            result.signature,
            transcript,
            context=UPDATE_CONTEXT,
        )
        assert result.step == self.step and result.round_id == self.round_id
        notice = decode_notice(result.message)
        if notice is not None:  # the node declined: the coordinator stops waiting for it
            self.notices.append((index, notice))
            self.machine.drop(index)
            if self.machine.ready():
                with contextlib.suppress(ProtocolError):  # too few left: the round aborts
                    self.advance()
            return
        msg = m.decode_client(result.message)
        assert msg.sender == index
        self.machine.handle(msg)
        self.accepted.append(result)
        if self.machine.ready():
            self.advance()

    def advance(self) -> None:
        out = self.machine.advance()
        self.step += 1
        self.outbox = {i: m.encode(msg) for i, msg in out.items()}


class FakeTransport:
    """A node's view of a :class:`FakeHub` (implements ``TaskTransport``)."""

    def __init__(self, hub: FakeHub, device_id: str) -> None:
        self.hub, self.device_id = hub, device_id
        self.polls = 0
        self.sent: list[SignedResult] = []

    def poll(self, wait: float) -> Task | None:
        self.polls += 1
        return self.hub.task_for(self.device_id)

    def send(self, result: SignedResult) -> None:
        self.sent.append(result)
        self.hub.submit(result)
