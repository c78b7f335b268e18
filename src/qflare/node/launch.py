"""Wiring for the ``qflare node`` commands: options in, a running node out.

The CLI parses flags into :class:`RunOptions` / :class:`EnrollOptions` and calls
:func:`enroll_node` or :func:`run_node`; everything else lives here and below.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qflare.crypto import DeterministicRng, Rng, SignatureScheme, SystemRng
from qflare.logs import StructuredFormatter, configure_logging
from qflare.node.enroll import enroll
from qflare.node.ledger_watch import LedgerWatch, WitnessConfig
from qflare.node.runner import NodeRunner, RunReport
from qflare.node.session import NodeSession, RetryPolicy
from qflare.node.state import DeviceRecord, NodeState
from qflare.node.trainer import TorchTrainer, Trainer, TrainingConfig, parse_trainer_spec
from qflare.node.transport import HttpApi, Timeouts
from qflare.participant.base import ParticipantFactory
from qflare.participant.chronos import EnclaveKeystores
from qflare.protocol.policy import ClientPolicy

__all__ = [
    "EnrollOptions",
    "RunOptions",
    "StructuredFormatter",
    "configure_logging",
    "enroll_node",
    "run_node",
]

DEFAULT_STATE_DIR = Path("qflare-node")


@dataclass(frozen=True)
class EnrollOptions:
    """``qflare node enroll``.

    Attributes:
        server: Server base URL.
        token: Single-use enrollment token.
        state_dir: Where the node keeps its keys and enrollment.
        ca: CA certificate of the server (copied into the state directory).
        insecure: Allow plain ``http://``.
        scheme: Identity signature scheme of the federation.
    """

    server: str
    token: str
    state_dir: Path = DEFAULT_STATE_DIR
    ca: Path | None = None
    insecure: bool = False
    scheme: SignatureScheme = SignatureScheme.MLDSA65


@dataclass(frozen=True)
class RunOptions:
    """``qflare node run``.

    Attributes:
        state_dir: The enrolled node's state directory.
        ca: CA certificate (default: the copy made at enrollment).
        insecure: Allow plain ``http://``.
        training: Real local training (ignored when ``trainer_spec`` is set).
        trainer_spec: ``constant:SEED[:WEIGHT]`` test trainer.
        max_rounds: Stop after this many completed rounds (``None``: run until stopped);
            aborted or dropped rounds do not count.
        seed: TEST ONLY: seed the protocol randomness (masks, secrets, rounding).
        poll_wait: Long-poll duration in seconds.
        policy: Reconnection backoff.
        enclave: Keep CHRONOS secrets in a simulated enclave (state under ``state_dir``).
        witness_keys: Public key files of the ledger witnesses this node trusts (none: the
            node does not watch the audit ledger).
        witness_quorum: Cosignatures a ledger head needs (default: all of ``witness_keys``).
        client_policy: The round parameters this node accepts (its own security policy).
        tee_maker: Directory of a *simulated* TEE manufacturer key (``qflare tee maker-init``)
            that certifies this device's enclave platform on first use, so it can attest.
        enclave_measurement: The aggregation enclave's measurement (hex) this node pins; with
            it the node takes part in ``enclave`` rounds.
        enclave_roots: Root certificate files the enclave's platform chain must end at.
        allow_simulated_attestation: Accept evidence from the *simulated* TEE backend.
    """

    state_dir: Path = DEFAULT_STATE_DIR
    ca: Path | None = None
    insecure: bool = False
    training: TrainingConfig | None = None
    trainer_spec: str | None = None
    max_rounds: int | None = None
    seed: int | None = None
    poll_wait: float = 10.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    enclave: bool = False
    witness_keys: tuple[Path, ...] = ()
    witness_quorum: int | None = None
    client_policy: ClientPolicy = field(default_factory=ClientPolicy)
    tee_maker: Path | None = None
    enclave_measurement: str | None = None
    enclave_roots: tuple[Path, ...] = ()
    allow_simulated_attestation: bool = False


def _participants(options: RunOptions, trainer: Trainer, rng: Rng) -> list[ParticipantFactory]:
    """The enclave participant when the node pinned an aggregation enclave measurement.

    Raises:
        ValueError: the measurement is not 64 hex digits.
    """
    if options.enclave_measurement is None:
        return []
    from qflare.node.enclave_upload import enclave_participant, pinned_policy

    policy = pinned_policy(
        bytes.fromhex(options.enclave_measurement),
        tuple(p.read_bytes() for p in options.enclave_roots),
        allow_simulated=options.allow_simulated_attestation,
    )
    return [enclave_participant(trainer, policy, rng)]


def _keystores(options: RunOptions, state: NodeState) -> EnclaveKeystores | None:
    """The simulated enclave keystore, provisioned with the pinned authority and the policy."""
    if not options.enclave:
        return None
    maker = None
    if options.tee_maker is not None:
        from qflare.tee.maker import load_maker

        maker = load_maker(options.tee_maker)
    return EnclaveKeystores(
        state.root / "enclave", state.authority(), options.client_policy, provisioner=maker
    )


def enroll_node(options: EnrollOptions) -> DeviceRecord:
    """Enroll a node (see :func:`qflare.node.enroll.enroll`)."""
    ca_pem = options.ca.read_bytes() if options.ca is not None else None
    with HttpApi(options.server, ca=options.ca, insecure=options.insecure) as api:
        return enroll(
            options.state_dir,
            api,
            options.token,
            scheme=options.scheme,
            rng=SystemRng(),
            ca_pem=ca_pem,
        )


def build_trainer(options: RunOptions) -> Trainer:
    """The trainer the options ask for.

    Raises:
        ValueError: neither a trainer spec nor a training config.
    """
    if options.trainer_spec is not None:
        return parse_trainer_spec(options.trainer_spec)
    if options.training is None:
        raise ValueError("give either a training config or a trainer spec")
    return TorchTrainer(options.training)


def protocol_rng(seed: int | None) -> Rng:
    """The OS CSPRNG, or (tests only) a deterministic generator seeded with ``seed``."""
    if seed is None:
        return SystemRng()
    logging.getLogger("qflare.node").warning(
        "--seed makes masks and secrets predictable: for tests only", extra={"seed_set": True}
    )
    return DeterministicRng(seed)


def _ledger_check(
    options: RunOptions, state: NodeState, device: DeviceRecord, api: HttpApi
) -> Callable[[], bool] | None:
    """The ledger watch's check when witnesses are configured (see :mod:`.ledger_watch`)."""
    if not options.witness_keys:
        if options.witness_quorum is not None:
            raise ValueError("--witness-quorum needs --witness-key")
        return None
    if device.server_scheme != SignatureScheme.MLDSA65:
        raise ValueError("watching the ledger needs an ML-DSA-65 server key")
    config = WitnessConfig.from_files(options.witness_keys, options.witness_quorum)
    return LedgerWatch.open(state.root, api, device.server_public_key, config).check


def run_node(options: RunOptions, stop_event: threading.Event | None = None) -> RunReport:
    """Run an enrolled node until ``max_rounds`` rounds are done or ``stop_event`` is set.

    On the way out the node tells the server it leaves (one signed notice, one attempt), so the
    server stops waiting for it and does not open rounds counting on it.

    Raises:
        qflare.node.state.StateError: the state directory is not an enrolled node.
        qflare.node.session.NodeFatalError: the server refuses this device.
    """
    stop = stop_event or threading.Event()
    state = NodeState.open(options.state_dir)
    device = state.require_device()
    state.authority()  # a node enrolled before enrollment authorities is told to re-enroll
    trainer = build_trainer(options)

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # returns early when asked to stop

    api = HttpApi(
        device.server_url,
        ca=options.ca or state.ca_file,
        insecure=options.insecure,
        timeouts=Timeouts(),
    )
    session = NodeSession(
        api,
        device,
        state.signer(),
        rng=SystemRng(),
        clock=time.time,
        sleep=sleep,
        policy=options.policy,
        stop_event=stop,
    )
    rng = protocol_rng(options.seed)
    participants = _participants(options, trainer, rng)
    runner = NodeRunner(
        state,
        session,
        trainer,
        rng,
        time.time,
        sleep,
        poll_wait=options.poll_wait,
        keystores=_keystores(options, state),
        policy=options.client_policy,
        ledger_check=_ledger_check(options, state, device, api),
        participants=participants,
    )
    try:
        report = runner.run(options.max_rounds, stop, completed_only=True)
        why = "stopped" if stop.is_set() else "max_rounds"
        session.send_once(runner.farewell(why, f"{report.completed} rounds completed"))
        return report
    finally:
        session.close()
