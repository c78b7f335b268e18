"""In-memory CHRONOS cohort: N clients (each with its keystore) wired to one server.

Messages go through the real msgpack codec, so byte counts are real; every client's and the
server's compute is measured per step. Dropouts can be injected at any step of the offline
phase or of a round, and hooks let tests play a lying server or a network attacker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from qflare.crypto import (
    DeterministicRng,
    MaskPrg,
    RingVector,
    Rng,
    SignatureScheme,
    Signer,
    SystemRng,
    make_signer,
)
from qflare.protocol.chronos import (
    ChronosClient,
    ChronosKeystore,
    ChronosServer,
    EpochConfig,
    RoundResult,
    SoftwareKeystore,
    State,
)
from qflare.protocol.chronos import messages as m
from qflare.protocol.errors import ProtocolError
from qflare.protocol.identity import EndorsedKey
from qflare.protocol.policy import ClientPolicy
from qflare.sim.identities import SimAuthority

InputFn = Callable[[int], RingVector]
ServerHook = Callable[[int, m.ServerMessage], m.ServerMessage | None]
ClientHook = Callable[[m.ClientMessage], m.ClientMessage | None]
_ORDER = {s: i for i, s in enumerate(State)}


@dataclass
class StepLog:
    """One protocol step: server messages down, client compute, client messages up.

    Attributes:
        state: The state whose client replies this step collects.
        download_bytes: Encoded bytes each client received to start the step.
        client_seconds: Compute time of each client that replied.
        upload_bytes: Encoded bytes each client sent.
        server_seconds: Server compute: handling the replies, then advancing.
    """

    state: State
    download_bytes: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    upload_bytes: dict[int, int] = field(default_factory=dict)
    server_seconds: float = 0.0


@dataclass
class PhaseLog:
    """The offline phase or one round, step by step.

    Attributes:
        steps: The steps in order.
        open_seconds: Server compute that opened the phase (``open_round``).
        result: The round's result (``None`` for the offline phase or a failed round).
        client_errors: Client id -> the protocol error that stopped it.
        server_errors: Errors the server raised (rejections and failures).
    """

    steps: list[StepLog] = field(default_factory=list)
    open_seconds: float = 0.0
    result: RoundResult | None = None
    client_errors: dict[int, ProtocolError] = field(default_factory=dict)
    server_errors: list[ProtocolError] = field(default_factory=list)

    def per_client_seconds(self) -> dict[int, float]:
        """Each client's compute summed over the steps."""
        out: dict[int, float] = {}
        for step in self.steps:
            for u, sec in step.client_seconds.items():
                out[u] = out.get(u, 0.0) + sec
        return out

    def per_client_bytes(self) -> dict[int, tuple[int, int]]:
        """Each client's (downloaded, uploaded) bytes summed over the steps."""
        out: dict[int, tuple[int, int]] = {}
        for step in self.steps:
            for u in set(step.download_bytes) | set(step.upload_bytes):
                down, up = out.get(u, (0, 0))
                out[u] = (down + step.download_bytes.get(u, 0), up + step.upload_bytes.get(u, 0))
        return out

    def server_seconds(self) -> float:
        """Server compute over the phase."""
        return self.open_seconds + sum(s.server_seconds for s in self.steps)


def software_keystores(
    cfg: EpochConfig,
    *,
    seed: int | None = None,
    signers: Mapping[int, Signer] | None = None,
    max_precomputed: int = 1,
    authority: SimAuthority | None = None,
    policy: ClientPolicy | None = None,
) -> dict[int, SoftwareKeystore]:
    """One :class:`SoftwareKeystore` per participant (fresh identity keys unless given).

    Each is provisioned with ``authority`` (default: :meth:`SimAuthority.default`).
    """

    def rng(tag: str) -> Rng:
        return SystemRng() if seed is None else DeterministicRng(f"{seed}/{tag}".encode())

    scheme = SignatureScheme(cfg.signature_scheme)
    ids = (
        dict(signers)
        if signers
        else {u: make_signer(scheme, rng(f"id{u}")) for u in cfg.participants}
    )
    key = (authority or SimAuthority.default()).key
    prg = MaskPrg(cfg.dim, cfg.modulus_bits)  # one device's scratch buffer, shared in simulation
    return {
        u: SoftwareKeystore(
            u,
            ids[u],
            rng(f"ks{u}"),
            authority=key,
            policy=policy,
            prg=prg,
            max_precomputed=max_precomputed,
        )
        for u in cfg.participants
    }


class ChronosCohort:
    """N CHRONOS clients and a server for one epoch, in one process.

    Args:
        config: Epoch parameters.
        keystores: Client id -> its keystore (enrolled with every client's identity key).
        server_hook: Rewrites (or drops, returning ``None``) each server->client message.
        client_hook: Rewrites (or drops) each client->server message.
        server_verifies: Whether the server checks O0 signatures.
        directory: The identity directory the server hands out (default: the keystores' keys,
            certified by ``authority``); a test plays a key-substituting server here.
        authority: Certifies the default directory (default: :meth:`SimAuthority.default`).
        views: Per client, a directory shown to it instead of ``directory``.
    """

    def __init__(
        self,
        config: EpochConfig,
        keystores: Mapping[int, ChronosKeystore],
        *,
        server_hook: ServerHook | None = None,
        client_hook: ClientHook | None = None,
        server_verifies: bool = True,
        directory: Mapping[int, EndorsedKey] | None = None,
        authority: SimAuthority | None = None,
        views: Mapping[int, Mapping[int, EndorsedKey]] | None = None,
    ) -> None:
        self.cfg, self.keystores = config, dict(keystores)
        self.identities = {u: ks.identity_public_key for u, ks in self.keystores.items()}
        scheme = SignatureScheme(config.signature_scheme)
        self.directory = (
            dict(directory)
            if directory is not None
            else (authority or SimAuthority.default()).endorsed(self.identities, scheme)
        )
        self.server = ChronosServer(config, self.identities, verify_signatures=server_verifies)
        views = dict(views or {})
        self.clients = {
            u: ChronosClient(config, self.keystores[u], views.get(u, self.directory))
            for u in config.participants
        }
        self.server_hook, self.client_hook = server_hook, client_hook
        self._silent: dict[int, State] = {}
        self.gone: set[int] = set()

    def _is_silent(self, client: int, state: State) -> bool:
        at = self._silent.get(client)
        return client in self.gone or (at is not None and _ORDER[state] >= _ORDER[at])

    # ---- phases -------------------------------------------------------------------------------

    def run_offline(self, dropouts: Mapping[int, State] | None = None) -> PhaseLog:
        """Run the offline phase; ``dropouts`` maps a client to the O-state it goes silent at.

        A client that goes silent offline stays silent for the whole epoch.
        """
        self._silent = dict(dropouts or {})
        log = PhaseLog()
        first = StepLog(State.O0_ADVERTISE_KEYS)
        size = len(m.encode(self.cfg))
        for u, client in self.clients.items():
            if self._is_silent(u, State.O0_ADVERTISE_KEYS):
                continue
            first.download_bytes[u] = size
            t0 = time.perf_counter()
            msg = client.start()
            first.client_seconds[u] = time.perf_counter() - t0
            self._deliver(msg, first, log)
        self._drive(first, log)
        self.gone |= set(self._silent)
        return log

    def run_round(
        self, round_id: int, inputs: InputFn, dropouts: Mapping[int, State] | None = None
    ) -> PhaseLog:
        """Run one round; ``dropouts`` maps a client to ``ON_MASKED_INPUT`` or ``ON_UNMASK``."""
        self._silent = dict(dropouts or {})
        log = PhaseLog()
        t0 = time.perf_counter()
        try:
            outbox = self.server.open_round(round_id)
        except ProtocolError as exc:
            log.server_errors.append(exc)
            return log
        finally:
            log.open_seconds = time.perf_counter() - t0
        step = StepLog(self.server.state)
        self._serve(outbox, step, log, inputs)
        self._drive(step, log)
        if self.server.results and self.server.results[-1].round_id == round_id:
            result = self.server.results[-1]
            log.result = result if result.total is not None else None
        return log

    def idle(self) -> dict[int, float]:
        """Idle time between rounds: every live client precomputes its next round's mask."""
        out: dict[int, float] = {}
        for u, client in self.clients.items():
            if u in self.server.excluded or client.state is State.ABORTED:
                continue
            t0 = time.perf_counter()
            client.precompute_next()
            out[u] = time.perf_counter() - t0
        return out

    # ---- plumbing -----------------------------------------------------------------------------

    def _drive(self, step: StepLog, log: PhaseLog) -> None:
        """Advance the server until the phase ends, serving each step's messages."""
        while True:
            t0 = time.perf_counter()
            try:
                outbox = self.server.advance()
            except ProtocolError as exc:
                log.server_errors.append(exc)
                outbox = {}
            finally:
                step.server_seconds += time.perf_counter() - t0
            log.steps.append(step)
            if not outbox:
                return
            step = StepLog(self.server.state)
            self._serve(outbox, step, log, None)

    def _serve(
        self,
        outbox: Mapping[int, m.ServerMessage],
        step: StepLog,
        log: PhaseLog,
        inputs: InputFn | None,
    ) -> None:
        for u, smsg in outbox.items():
            if self._is_silent(u, step.state):
                continue
            wire = self.server_hook(u, smsg) if self.server_hook else smsg
            if wire is None:
                continue
            data = m.encode(wire)
            step.download_bytes[u] = len(data)
            client = self.clients[u]
            if inputs is not None:
                client.set_input(inputs(u))
            t0 = time.perf_counter()
            try:
                reply = client.receive(m.decode_server(data))
            except ProtocolError as exc:
                log.client_errors[u] = exc
                continue
            finally:
                step.client_seconds[u] = time.perf_counter() - t0
            self._deliver(reply, step, log)

    def _deliver(self, msg: m.ClientMessage, step: StepLog, log: PhaseLog) -> None:
        wire = self.client_hook(msg) if self.client_hook else msg
        if wire is None:
            return
        data = m.encode(wire)
        step.upload_bytes[wire.sender] = len(data)
        t0 = time.perf_counter()
        try:
            self.server.handle(m.decode_client(data))
        except ProtocolError as exc:
            log.server_errors.append(exc)
        finally:
            step.server_seconds += time.perf_counter() - t0
