"""In-memory cohort: N SecAgg clients wired to one server, like h11's connection pair.

Messages go through the real msgpack codec (so byte counts are real); compute time of every
client and of the server is measured per round. Dropouts can be injected at any round, and hooks
let tests play a lying server or a network attacker.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from qflare.crypto import (
    DeterministicRng,
    MaskPrg,
    RingVector,
    Rng,
    SignatureScheme,
    Signer,
    SystemRng,
    make_signer,
    ring_dtype,
)
from qflare.protocol import messages as m
from qflare.protocol.errors import ProtocolError
from qflare.protocol.policy import ClientPolicy
from qflare.protocol.secagg import RoundRegistry, SecAggClient, SecAggServer, State
from qflare.sim.identities import SimAuthority

InputFn = Callable[[int], RingVector]
ServerHook = Callable[[int, m.ServerMessage], m.ServerMessage | None]
ClientHook = Callable[[m.ClientMessage], m.ClientMessage | None]


@dataclass
class CohortResult:
    """What one simulated round produced.

    Attributes:
        total: The unmasked modular sum, or ``None`` if the round aborted.
        survivors: Clients whose inputs are in ``total`` (U3).
        server_state: Final server state.
        client_seconds: Per round, the compute time of each client that acted.
        server_seconds: Per round, server compute (collect + advance).
        upload_bytes: Per round, encoded bytes sent by each client.
        client_errors: Client id -> protocol error that aborted it.
        server_errors: Protocol errors the server raised while collecting.
        excluded: Client id -> why the server excluded it.
    """

    total: RingVector | None
    survivors: tuple[int, ...]
    server_state: State
    client_seconds: dict[State, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    server_seconds: dict[State, float] = field(default_factory=lambda: defaultdict(float))
    upload_bytes: dict[State, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    client_errors: dict[int, ProtocolError] = field(default_factory=dict)
    server_errors: list[ProtocolError] = field(default_factory=list)
    excluded: dict[int, str] = field(default_factory=dict)

    def mean_client_seconds(self) -> float:
        """Mean over clients of their total compute across the round."""
        per_client: dict[int, float] = defaultdict(float)
        for times in self.client_seconds.values():
            for cid, sec in times.items():
                per_client[cid] += sec
        return float(np.mean(list(per_client.values()))) if per_client else 0.0

    def server_total_seconds(self) -> float:
        """Server compute over the whole round."""
        return sum(self.server_seconds.values())


def expected_sum(
    inputs: InputFn, clients: tuple[int, ...], dim: int, modulus_bits: int
) -> RingVector:
    """Plain modular sum of ``inputs(u)`` over ``clients`` (the value the protocol must output)."""
    acc: RingVector = np.zeros(dim, dtype=ring_dtype(modulus_bits))
    for u in clients:
        np.add(acc, inputs(u), out=acc)
    return acc


class Cohort:
    """N clients and a server for one round, in one process.

    Args:
        config: Round parameters.
        scheme: Identity signature scheme (keys are made here, as enrollment would).
        seed: Seed for all randomness (``None``: the OS CSPRNG).
        dropouts: Client id -> round at which it goes silent (it sends nothing from then on).
        server_hook: Rewrites (or drops, returning ``None``) each server->client message.
        client_hook: Rewrites (or drops) each client->server message.
        signers: Identity keys to use (default: fresh ones per participant).
        server_verifies: Whether the server checks signatures (off to play a lying server).
        authority: The enrollment authority that certifies the signers (default: a new one).
        certificates: What the server hands out as the participants' certificates (default:
            the authority's genuine ones; a test plays a key-substituting server here).
        policy: Every client's policy (default: :class:`ClientPolicy`).
        views: Per client, the certificates the server shows it instead of ``certificates``.
        corrupt: Called with each client machine once it exists (a test makes one malicious).
    """

    def __init__(
        self,
        config: m.RoundConfig,
        *,
        seed: int | None = None,
        dropouts: Mapping[int, State] | None = None,
        server_hook: ServerHook | None = None,
        client_hook: ClientHook | None = None,
        signers: Mapping[int, Signer] | None = None,
        server_verifies: bool = True,
        authority: SimAuthority | None = None,
        certificates: Mapping[int, bytes] | None = None,
        policy: ClientPolicy | None = None,
        views: Mapping[int, Mapping[int, bytes]] | None = None,
        corrupt: Callable[[int, SecAggClient], None] | None = None,
    ) -> None:
        self.cfg = config
        self._rng: Rng = SystemRng() if seed is None else DeterministicRng(seed)
        self.dropouts = dict(dropouts or {})
        self._server_hook, self._client_hook = server_hook, client_hook
        self._server_verifies = server_verifies
        self.clients: dict[int, SecAggClient] = {}
        scheme = SignatureScheme(config.signature_scheme)
        self.signers = (
            dict(signers)
            if signers
            else {u: make_signer(scheme, self._rng) for u in config.participants}
        )
        self.identities = {u: s.public_key for u, s in self.signers.items()}
        self.authority = authority or SimAuthority(self._rng)
        self.certificates = (
            dict(certificates)
            if certificates is not None
            else self.authority.certify_all(self.signers)
        )
        self.authority.warm(self.certificates)  # devices verify peers once, not every round
        self.policy = policy or ClientPolicy()
        self._views, self._corrupt = dict(views or {}), corrupt
        self.registries = {u: RoundRegistry() for u in config.participants}

    def _silent(self, client: int, state: State) -> bool:
        at = self.dropouts.get(client)
        return at is not None and _ORDER[state] >= _ORDER[at]

    def run(self, inputs: InputFn, progress: Callable[[str], None] | None = None) -> CohortResult:
        """Run the round to completion (or abort) and return what happened.

        Args:
            inputs: Client id -> a fresh ring vector that the client may overwrite (called when
                the client reaches R2, and again by :func:`expected_sum` for checks).
            progress: Called with the state name each time the server advances.
        """
        server = SecAggServer(self.cfg, self.identities, verify_signatures=self._server_verifies)
        prg = MaskPrg(self.cfg.dim, self.cfg.modulus_bits)  # one device's buffers, reused
        res = CohortResult(total=None, survivors=(), server_state=server.state)
        self.clients = clients = self._make_clients(prg, res)
        for u, client in clients.items():
            if self._silent(u, State.R0_ADVERTISE_KEYS):
                continue
            t0 = time.perf_counter()
            msg = client.start()
            res.client_seconds[State.R0_ADVERTISE_KEYS][u] = time.perf_counter() - t0
            self._deliver(server, msg, State.R0_ADVERTISE_KEYS, res)
        while server.state not in (State.COMPLETED, State.ABORTED):
            state = server.state
            if progress is not None:
                progress(state.value)
            t0 = time.perf_counter()
            try:
                outbox = server.advance()
            except ProtocolError as exc:
                res.server_errors.append(exc)
                break
            finally:
                res.server_seconds[state] += time.perf_counter() - t0
            self._serve(server.state, outbox, clients, server, res, inputs)
        res.server_state, res.excluded = server.state, dict(server.excluded)
        if server.result is not None:
            res.total, res.survivors = server.result, server.survivors
        return res

    def _make_clients(self, prg: MaskPrg, res: CohortResult) -> dict[int, SecAggClient]:
        """One client machine per participant; one that refuses the round is recorded."""
        scheme = SignatureScheme(self.cfg.signature_scheme)
        clients: dict[int, SecAggClient] = {}
        for u in self.cfg.participants:
            certificates = self._views.get(u, self.certificates)
            try:
                clients[u] = SecAggClient(
                    self.cfg,
                    u,
                    self.signers[u],
                    self.authority.directory(certificates, scheme),
                    self._rng,
                    self.registries[u],
                    prg,
                    self.policy,
                )
            except ProtocolError as exc:
                res.client_errors[u] = exc
                continue
            if self._corrupt is not None:
                self._corrupt(u, clients[u])
        return clients

    def _serve(
        self,
        state: State,
        outbox: Mapping[int, m.ServerMessage],
        clients: Mapping[int, SecAggClient],
        server: SecAggServer,
        res: CohortResult,
        inputs: InputFn,
    ) -> None:
        for u, smsg in outbox.items():
            if self._silent(u, state) or u not in clients:
                continue
            wire = self._server_hook(u, smsg) if self._server_hook else smsg
            if wire is None:
                continue
            delivered = m.decode_server(m.encode(wire))
            client = clients[u]
            if state is State.R2_MASKED_INPUT:
                client.set_input(inputs(u))
            t0 = time.perf_counter()
            try:
                reply = client.receive(delivered)
            except ProtocolError as exc:
                res.client_errors[u] = exc
                continue
            finally:
                res.client_seconds[state][u] = time.perf_counter() - t0
            self._deliver(server, reply, state, res)

    def _deliver(
        self, server: SecAggServer, msg: m.ClientMessage, state: State, res: CohortResult
    ) -> None:
        wire = self._client_hook(msg) if self._client_hook else msg
        if wire is None:
            return
        data = m.encode(wire)
        res.upload_bytes[state][wire.sender] = len(data)
        decoded = m.decode_client(data)
        t0 = time.perf_counter()
        try:
            server.handle(decoded)
        except ProtocolError as exc:
            res.server_errors.append(exc)
        finally:
            res.server_seconds[state] += time.perf_counter() - t0


_ORDER = {s: i for i, s in enumerate(State)}
