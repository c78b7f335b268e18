"""Sans-IO SecAgg / SecAgg+ server: ``handle`` collects, ``ready``/``advance`` move on.

The server never sees an unmasked input: masked vectors are added into one running accumulator as
they arrive (O(d) memory), and at the end only the self masks of survivors and the pairwise masks
between dropped clients and their surviving neighbours are regenerated and removed.

A misbehaving client costs the round as little as possible: a bad advertisement excludes it at
R0; a client whose neighbours reject its shares is simply not held by them; a released share
that does not match the commitment its owner signed in R1 is dropped and its sender named in
:attr:`SecAggServer.culprits`; a round fails only when some survivor's secret has fewer than
``t`` good shares, and then it names that client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy as np

from qflare.crypto import (
    CryptoError,
    RingVector,
    SignatureScheme,
    ring_dtype,
    verify_signature,
    x25519_public_is_valid,
)
from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.graph import neighbourhoods
from qflare.protocol.secagg import keys
from qflare.protocol.secagg.states import State
from qflare.protocol.secagg.unmask import ReconstructionError, UnmaskInputs, remove_masks
from qflare.protocol.seed import SeedCollector

_Handler = Callable[["SecAggServer", Any], None]
_Step = Callable[["SecAggServer", frozenset[int]], tuple[State, dict[int, m.ServerMessage]]]


class SecAggServer:
    """The server's side of one round.

    A misbehaving client is excluded from the round (treated as a dropout) and the error is raised
    to the caller naming it; the round goes on while at least ``t`` clients remain.

    Args:
        config: Public round parameters.
        identities: Identity public keys of the participants.
        verify_signatures: Check R0/R3 signatures on arrival (clients check them too).
        max_seed_restarts: Restarts of the graph-seed exchange before the round aborts.
    """

    def __init__(
        self,
        config: m.RoundConfig,
        identities: Mapping[int, bytes],
        *,
        verify_signatures: bool = True,
        max_seed_restarts: int = 2,
    ) -> None:
        self.cfg = config
        self.state = State.R0_ADVERTISE_KEYS
        self.abort_reason: AbortReason | None = None
        self._identities = identities
        self._verify = verify_signatures
        self._scheme = SignatureScheme(config.signature_scheme)
        self._participants = frozenset(config.participants)
        self._seed = SeedCollector(keys.seed_scope(config), max_seed_restarts)
        self.graph_seed = b""
        self._nbrs: dict[int, frozenset[int]] = (
            {} if config.sparse else neighbourhoods(config.participants, config.k, b"")
        )
        self._expected: set[int] = set(config.participants)
        self._received: dict[int, m.ClientMessage] = {}
        self.excluded: dict[int, str] = {}
        self.culprits: dict[int, str] = {}
        self._adverts: dict[int, m.AdvertiseKeys] = {}
        self._directory: dict[int, frozenset[int]] = {}
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._commitments: dict[int, dict[int, bytes]] = {}
        self._self_commits: dict[int, bytes] = {}
        self._partners: dict[int, frozenset[int]] = {}
        self._missing: dict[int, frozenset[int]] = {}
        self._held: dict[int, frozenset[int]] = {}
        self._u2: frozenset[int] = frozenset()
        self._u3: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
        self._released: dict[int, m.UnmaskShares] = {}
        self._acc: RingVector = np.zeros(config.dim, dtype=ring_dtype(config.modulus_bits))
        self._nbytes = self._acc.nbytes
        self.result: RingVector | None = None

    # ---- collect ----------------------------------------------------------------------------

    def handle(self, msg: m.ClientMessage) -> None:
        """Validate and store one client message.

        Raises:
            RemoteProtocolError: unexpected, malformed, replayed or forged; the sender is excluded.
        """
        sender = msg.sender
        if sender not in self._participants:
            raise RemoteProtocolError(
                "sender is not a participant", state=self.state.value, client=sender
            )
        if self._received.get(sender) == msg:
            return  # an identical retry is idempotent
        handler = _TRANSITIONS.get((self.state, type(msg)))
        try:
            if handler is None:
                self._reject(
                    sender, f"unexpected {type(msg).__name__}", AbortReason.UNEXPECTED_MESSAGE
                )
            if msg.round_id != self.cfg.round_id or msg.version != m.PROTOCOL_VERSION:
                self._reject(
                    sender, f"message for round {msg.round_id}", AbortReason.UNEXPECTED_MESSAGE
                )
            if sender not in self._expected or sender in self._received:
                self._reject(
                    sender, "client is not expected to send now", AbortReason.UNEXPECTED_MESSAGE
                )
            handler(self, msg)
        except RemoteProtocolError:
            self._exclude(sender, "protocol violation")
            raise
        self._received[sender] = msg

    def drop(self, client: int) -> None:
        """Mark a client as silent (its deadline passed); it becomes a dropout."""
        if client in self._expected and client not in self._received:
            self._exclude(client, "dropped")

    # ---- crash recovery (the I/O layer persists the running sum itself) ------------------------

    @property
    def accumulator(self) -> bytes:
        """The running sum of masked inputs, as raw bytes (safe to persist: it is masked)."""
        return self._acc.tobytes()

    def resume_masked_input(self, sender: int, missing: tuple[int, ...] = ()) -> None:
        """Replay: mark ``sender``'s masked input as accepted without re-adding it.

        Used when rebuilding a round from its event log; the sum itself comes back through
        :meth:`load_accumulator`.

        Raises:
            LocalProtocolError: not in R2, or ``sender`` is not expected now.
        """
        if self.state is not State.R2_MASKED_INPUT or sender not in self.pending():
            raise LocalProtocolError(
                "no masked input expected from this client", state=self.state.value, client=sender
            )
        self._missing[sender] = frozenset(missing)
        self._received[sender] = m.MaskedInput(
            round_id=self.cfg.round_id, sender=sender, vector=b"", missing=missing
        )

    def load_accumulator(self, data: bytes) -> None:
        """Replay: restore the persisted running sum.

        Raises:
            LocalProtocolError: wrong length.
        """
        if len(data) != self._nbytes:
            raise LocalProtocolError("persisted sum has the wrong length", state=self.state.value)
        self._acc = np.frombuffer(data, dtype=self._acc.dtype).copy()

    def pending(self) -> frozenset[int]:
        """Clients the current round is still waiting for."""
        return frozenset(self._expected - set(self._received))

    def ready(self) -> bool:
        """True when every live client of the current round has answered."""
        return self.state not in (State.COMPLETED, State.ABORTED) and not self.pending()

    # ---- advance ----------------------------------------------------------------------------

    def advance(self) -> dict[int, m.ServerMessage]:
        """Close the current round and return the messages for the next, by recipient.

        Clients that have not answered are treated as dropouts. After R4 the aggregate is in
        :attr:`result` and the returned mapping is empty.

        Raises:
            RemoteProtocolError: fewer than ``t`` clients remain, or reconstruction failed; the
                server moves to ``ABORTED``.
            LocalProtocolError: the round is already over.
        """
        step = _ADVANCE.get(self.state)
        if step is None:
            raise LocalProtocolError("round is over", state=self.state.value)
        for client in self.pending():
            self._exclude(client, "dropped")
        responders = frozenset(self._received)
        if len(responders) < self.cfg.t:
            self._fail(
                f"{len(responders)} clients answered, threshold is {self.cfg.t}",
                AbortReason.TOO_FEW_CLIENTS,
            )
        nxt, out = step(self, responders)
        self.state = nxt
        self._received = {}
        self._expected = set(out)
        return out

    # ---- helpers ------------------------------------------------------------------------------

    def _reject(self, client: int, why: str, reason: AbortReason) -> NoReturn:
        raise RemoteProtocolError(why, state=self.state.value, client=client, reason=reason)

    def _exclude(self, client: int, why: str) -> None:
        self.excluded.setdefault(client, f"{self.state.value}: {why}")
        self._expected.discard(client)

    def _fail(self, why: str, reason: AbortReason, client: int | None = None) -> NoReturn:
        state = self.state.value
        self.state, self.abort_reason = State.ABORTED, reason
        raise RemoteProtocolError(why, state=state, client=client, reason=reason, http_status=409)

    def _check_signature(self, client: int, sig: bytes, transcript: bytes, context: bytes) -> None:
        if not self._verify:
            return
        try:
            verify_signature(
                self._scheme, self._identities.get(client, b""), sig, transcript, context=context
            )
        except CryptoError:
            self._reject(client, "bad signature", AbortReason.BAD_SIGNATURE)

    @property
    def survivors(self) -> tuple[int, ...]:
        """U3: the clients whose masked inputs are in the sum (empty before R3)."""
        return self._u3

    def closed(self, client: int) -> frozenset[int]:
        """Closed neighbourhood of ``client`` in this round's graph (known after the seed)."""
        return self._nbrs[client] | {client}

    # ---- per-round collectors -----------------------------------------------------------------

    def _on_advertise(self, msg: m.AdvertiseKeys) -> None:
        if not (x25519_public_is_valid(msg.enc_pk) and x25519_public_is_valid(msg.mask_pk)):
            self._reject(
                msg.sender, "public keys are malformed or of small order", AbortReason.BAD_KEY
            )
        transcript = keys.advertise_transcript_of(self.cfg, msg)
        self._check_signature(msg.sender, msg.signature, transcript, keys.ADVERTISE_CONTEXT)
        refused = self._seed.offer(msg.sender, msg.seed_commit, sparse=self.cfg.sparse)
        if refused is not None:
            self._reject(msg.sender, refused, AbortReason.MALFORMED_MESSAGE)
        self._adverts[msg.sender] = msg

    def _on_reveal(self, msg: m.SeedReveal) -> None:
        try:
            self._seed.reveal(msg.sender, msg.attempt, msg.reveal, msg.next_commit)
        except ValueError as exc:
            self._reject(msg.sender, f"seed reveal refused: {exc}", AbortReason.MALFORMED_MESSAGE)

    def _on_shares(self, msg: m.EncryptedShares) -> None:
        allowed = self._directory[msg.sender] - {msg.sender}
        holders = set(msg.ciphertexts)
        well_formed = (
            all(len(c) == 2 * keys.COMMITMENT_BYTES for c in msg.commitments.values())
            and len(msg.self_mask_commit) == keys.COMMITMENT_BYTES
        )
        if not holders <= allowed or set(msg.commitments) != holders | {msg.sender}:
            self._reject(
                msg.sender,
                "ciphertexts do not match the key directory",
                AbortReason.MALFORMED_MESSAGE,
            )
        if not well_formed or len(holders) + 1 < self.cfg.t:
            self._reject(
                msg.sender,
                "malformed commitments or too few holders",
                AbortReason.MALFORMED_MESSAGE,
            )
        self._ciphertexts[msg.sender] = dict(msg.ciphertexts)
        self._commitments[msg.sender] = dict(msg.commitments)
        self._self_commits[msg.sender] = msg.self_mask_commit

    def _on_masked_input(self, msg: m.MaskedInput) -> None:
        if len(msg.vector) != self._nbytes:
            self._reject(
                msg.sender,
                f"vector has {len(msg.vector)} bytes, expected {self._nbytes}",
                AbortReason.MALFORMED_MESSAGE,
            )
        if not set(msg.missing) <= self._partners[msg.sender] - {msg.sender}:
            self._reject(
                msg.sender, "reports shares of non-partners", AbortReason.MALFORMED_MESSAGE
            )
        self._missing[msg.sender] = frozenset(msg.missing)
        np.add(self._acc, np.frombuffer(msg.vector, dtype=self._acc.dtype), out=self._acc)

    def _on_consistency(self, msg: m.ConsistencySignature) -> None:
        transcript = keys.consistency_transcript(self.cfg, self._u3, self.graph_seed)
        self._check_signature(msg.sender, msg.signature, transcript, keys.CONSISTENCY_CONTEXT)
        self._signatures[msg.sender] = msg.signature

    def _on_unmask(self, msg: m.UnmaskShares) -> None:
        held = self._held[msg.sender]
        alive = held & set(self._u3)
        if not set(msg.self_mask_shares) <= alive or not set(msg.key_shares) <= held - alive:
            self._reject(
                msg.sender, "unmask shares do not match the request", AbortReason.MALFORMED_MESSAGE
            )
        self._released[msg.sender] = msg  # shares are checked when a rebuilt secret fails

    # ---- per-round advance steps --------------------------------------------------------------

    def _advance_r0(self, u1: frozenset[int]) -> tuple[State, dict[int, m.ServerMessage]]:
        if not self.cfg.sparse:
            return State.R1_SHARE_KEYS, self._directories(u1, {})
        self._seed.restrict(u1)
        return State.R0_REVEAL_SEED, self._seed_round(u1)

    def _seed_round(self, members: frozenset[int]) -> dict[int, m.ServerMessage]:
        commits = dict(sorted(self._seed.commitments.items()))
        return {
            u: m.SeedCommitments(
                round_id=self.cfg.round_id,
                recipient=u,
                attempt=self._seed.attempt,
                commitments=commits,
            )
            for u in sorted(members)
        }

    def _advance_seed(self, revealed: frozenset[int]) -> tuple[State, dict[int, m.ServerMessage]]:
        reveals = self._seed.reveals
        try:
            seed = self._seed.close()
        except ValueError as exc:
            self._fail(f"graph seed withheld: {exc}", AbortReason.SEED_WITHHELD)
        if seed is None:  # a restart among those who revealed
            return State.R0_REVEAL_SEED, self._seed_round(frozenset(self._seed.commitments))
        self.graph_seed = seed
        self._nbrs = neighbourhoods(self.cfg.participants, self.cfg.k, seed)
        return State.R1_SHARE_KEYS, self._directories(revealed, dict(sorted(reveals.items())))

    def _directories(
        self, u1: frozenset[int], reveals: dict[int, bytes]
    ) -> dict[int, m.ServerMessage]:
        out: dict[int, m.ServerMessage] = {}
        for u in sorted(u1):
            directory = self.closed(u) & u1
            if len(directory) < self.cfg.t:
                self._exclude(u, "too few neighbours advertised keys")
                continue
            self._directory[u] = directory
            entries = tuple(self._adverts[v] for v in sorted(directory))
            out[u] = m.KeyDirectory(
                round_id=self.cfg.round_id, recipient=u, entries=entries, reveals=reveals
            )
        return out

    def _advance_r1(self, u2: frozenset[int]) -> tuple[State, dict[int, m.ServerMessage]]:
        self._u2 = u2
        cts = self._ciphertexts
        out: dict[int, m.ServerMessage] = {}
        for v in sorted(u2):
            senders = [
                w for w in sorted(self._directory[v] & u2) if w != v and v in cts[w] and w in cts[v]
            ]
            self._partners[v] = frozenset(senders) | {v}
            if len(senders) + 1 < self.cfg.t:
                self._exclude(v, "too few neighbours shared keys")
                continue
            out[v] = m.ShareRelay(
                round_id=self.cfg.round_id,
                recipient=v,
                ciphertexts={w: cts[w][v] for w in senders},
                commitments={w: self._commitments[w][v] for w in senders},
            )
        self._ciphertexts = {}
        return State.R2_MASKED_INPUT, out

    def _advance_r2(self, u3: frozenset[int]) -> tuple[State, dict[int, m.ServerMessage]]:
        self._u3 = tuple(sorted(u3))
        for v in u3:
            self._held[v] = self._partners[v] - self._missing.get(v, frozenset())
        rid = self.cfg.round_id
        return State.R3_CONSISTENCY, {
            v: m.ConsistencyRequest(round_id=rid, recipient=v, survivors=self._u3) for v in self._u3
        }

    def _advance_r3(self, u4: frozenset[int]) -> tuple[State, dict[int, m.ServerMessage]]:
        dropped = tuple(sorted(self._u2 - set(self._u3)))
        out: dict[int, m.ServerMessage] = {}
        for v in sorted(u4):
            ball = frozenset().union(*(self.closed(o) for o in self._held[v]))
            sigs = {w: self._signatures[w] for w in sorted(ball & u4)}
            out[v] = m.UnmaskRequest(
                round_id=self.cfg.round_id,
                recipient=v,
                survivors=self._u3,
                dropped=dropped,
                signatures=sigs,
            )
        return State.R4_UNMASK, out

    def _advance_r4(self, u5: frozenset[int]) -> tuple[State, dict[int, m.ServerMessage]]:
        inputs = UnmaskInputs(
            cfg=self.cfg,
            survivors=self._u3,
            dropped=tuple(sorted(self._u2 - set(self._u3))),
            responses={v: r for v, r in self._released.items() if v in u5},
            adverts=self._adverts,
            partners=self._partners,
            self_commits=self._self_commits,
            commitments=self._commitments,
        )
        try:
            self.culprits.update(remove_masks(self._acc, inputs))
        except ReconstructionError as exc:
            if exc.proven:  # short of good shares is not proof: dropouts or others could cause it
                self.culprits.setdefault(exc.owner, f"R4: {exc}")
            self._fail(
                f"could not remove masks: {exc}", AbortReason.RECONSTRUCTION_FAILED, exc.owner
            )
        self.result = self._acc
        return State.COMPLETED, {}


_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.R0_ADVERTISE_KEYS, m.AdvertiseKeys): SecAggServer._on_advertise,
    (State.R0_REVEAL_SEED, m.SeedReveal): SecAggServer._on_reveal,
    (State.R1_SHARE_KEYS, m.EncryptedShares): SecAggServer._on_shares,
    (State.R2_MASKED_INPUT, m.MaskedInput): SecAggServer._on_masked_input,
    (State.R3_CONSISTENCY, m.ConsistencySignature): SecAggServer._on_consistency,
    (State.R4_UNMASK, m.UnmaskShares): SecAggServer._on_unmask,
}
"""The server's transition table: (state, client message type) -> collector."""

_ADVANCE: dict[State, _Step] = {
    State.R0_ADVERTISE_KEYS: SecAggServer._advance_r0,
    State.R0_REVEAL_SEED: SecAggServer._advance_seed,
    State.R1_SHARE_KEYS: SecAggServer._advance_r1,
    State.R2_MASKED_INPUT: SecAggServer._advance_r2,
    State.R3_CONSISTENCY: SecAggServer._advance_r3,
    State.R4_UNMASK: SecAggServer._advance_r4,
}
"""The server's advance table: collecting state -> step (returns the next state and messages)."""
