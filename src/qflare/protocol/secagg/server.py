"""Sans-IO SecAgg / SecAgg+ server: ``handle`` collects, ``ready``/``advance`` move on.

The server never sees an unmasked input: masked vectors are added into one running accumulator as
they arrive (O(d) memory), and at the end only the self masks of survivors and the pairwise masks
between dropped clients and their surviving neighbours are regenerated and removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy as np

from qflare.crypto import CryptoError, RingVector, SignatureScheme, ring_dtype, verify_signature
from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.graph import neighbourhoods
from qflare.protocol.secagg import keys
from qflare.protocol.secagg.states import State
from qflare.protocol.secagg.unmask import UnmaskInputs, remove_masks

_Handler = Callable[["SecAggServer", Any], None]
_NEXT = {
    State.R0_ADVERTISE_KEYS: State.R1_SHARE_KEYS,
    State.R1_SHARE_KEYS: State.R2_MASKED_INPUT,
    State.R2_MASKED_INPUT: State.R3_CONSISTENCY,
    State.R3_CONSISTENCY: State.R4_UNMASK,
    State.R4_UNMASK: State.COMPLETED,
}


class SecAggServer:
    """The server's side of one round.

    A misbehaving client is excluded from the round (treated as a dropout) and the error is raised
    to the caller naming it; the round goes on while at least ``t`` clients remain.

    Args:
        config: Public round parameters.
        identities: Identity public keys of the participants.
        verify_signatures: Check R0/R3 signatures on arrival (clients check them too).
    """

    def __init__(
        self,
        config: m.RoundConfig,
        identities: Mapping[int, bytes],
        *,
        verify_signatures: bool = True,
    ) -> None:
        self.cfg = config
        self.state = State.R0_ADVERTISE_KEYS
        self.abort_reason: AbortReason | None = None
        self._identities = identities
        self._verify = verify_signatures
        self._scheme = SignatureScheme(config.signature_scheme)
        self._nbrs = neighbourhoods(config.participants, config.k, config.graph_seed)
        self._expected: set[int] = set(config.participants)
        self._received: dict[int, m.ClientMessage] = {}
        self.excluded: dict[int, str] = {}
        self._adverts: dict[int, m.AdvertiseKeys] = {}
        self._directory: dict[int, frozenset[int]] = {}
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self._held: dict[int, frozenset[int]] = {}
        self._u2: frozenset[int] = frozenset()
        self._u3: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
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
        if sender not in self._nbrs:
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

    def resume_masked_input(self, sender: int) -> None:
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
        self._received[sender] = m.MaskedInput(
            round_id=self.cfg.round_id, sender=sender, vector=b""
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
        out = step(self, responders)
        self.state = _NEXT[self.state]
        self._received = {}
        self._expected = set(out)
        return out

    # ---- helpers ------------------------------------------------------------------------------

    def _reject(self, client: int, why: str, reason: AbortReason) -> NoReturn:
        raise RemoteProtocolError(why, state=self.state.value, client=client, reason=reason)

    def _exclude(self, client: int, why: str) -> None:
        self.excluded.setdefault(client, f"{self.state.value}: {why}")
        self._expected.discard(client)

    def _fail(self, why: str, reason: AbortReason) -> NoReturn:
        state = self.state.value
        self.state, self.abort_reason = State.ABORTED, reason
        raise RemoteProtocolError(why, state=state, reason=reason, http_status=409)

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
        """Closed neighbourhood of ``client`` in this round's graph."""
        return self._nbrs[client] | {client}

    # ---- per-round handlers -------------------------------------------------------------------

    def _on_advertise(self, msg: m.AdvertiseKeys) -> None:
        if len(msg.enc_pk) != 32 or len(msg.mask_pk) != 32:
            self._reject(msg.sender, "public keys must be 32 bytes", AbortReason.MALFORMED_MESSAGE)
        transcript = keys.advertise_transcript_of(self.cfg, msg)
        self._check_signature(msg.sender, msg.signature, transcript, keys.ADVERTISE_CONTEXT)
        self._adverts[msg.sender] = msg

    def _on_shares(self, msg: m.EncryptedShares) -> None:
        if set(msg.ciphertexts) != self._directory[msg.sender] - {msg.sender}:
            self._reject(
                msg.sender,
                "ciphertexts do not match the key directory",
                AbortReason.MALFORMED_MESSAGE,
            )
        self._ciphertexts[msg.sender] = dict(msg.ciphertexts)

    def _on_masked_input(self, msg: m.MaskedInput) -> None:
        if len(msg.vector) != self._nbytes:
            self._reject(
                msg.sender,
                f"vector has {len(msg.vector)} bytes, expected {self._nbytes}",
                AbortReason.MALFORMED_MESSAGE,
            )
        np.add(self._acc, np.frombuffer(msg.vector, dtype=self._acc.dtype), out=self._acc)

    def _on_consistency(self, msg: m.ConsistencySignature) -> None:
        transcript = keys.consistency_transcript(self.cfg, self._u3)
        self._check_signature(msg.sender, msg.signature, transcript, keys.CONSISTENCY_CONTEXT)
        self._signatures[msg.sender] = msg.signature

    def _on_unmask(self, msg: m.UnmaskShares) -> None:
        held = self._held[msg.sender]
        alive = held & set(self._u3)
        if set(msg.self_mask_shares) != alive or set(msg.key_shares) != held - alive:
            self._reject(
                msg.sender, "unmask shares do not match the request", AbortReason.MALFORMED_MESSAGE
            )

    # ---- per-round advance steps --------------------------------------------------------------

    def _advance_r0(self, u1: frozenset[int]) -> dict[int, m.ServerMessage]:
        out: dict[int, m.ServerMessage] = {}
        for u in sorted(u1):
            directory = self.closed(u) & u1
            if len(directory) < self.cfg.t:
                self._exclude(u, "too few neighbours advertised keys")
                continue
            self._directory[u] = directory
            entries = tuple(self._adverts[v] for v in sorted(directory))
            out[u] = m.KeyDirectory(round_id=self.cfg.round_id, recipient=u, entries=entries)
        return out

    def _advance_r1(self, u2: frozenset[int]) -> dict[int, m.ServerMessage]:
        self._u2 = u2
        out: dict[int, m.ServerMessage] = {}
        for v in sorted(u2):
            relay = {w: self._ciphertexts[w][v] for w in sorted(self._directory[v] & u2) if w != v}
            self._held[v] = frozenset(relay) | {v}
            if len(relay) + 1 < self.cfg.t:
                self._exclude(v, "too few neighbours shared keys")
                continue
            out[v] = m.ShareRelay(round_id=self.cfg.round_id, recipient=v, ciphertexts=relay)
        self._ciphertexts = {}
        return out

    def _advance_r2(self, u3: frozenset[int]) -> dict[int, m.ServerMessage]:
        self._u3 = tuple(sorted(u3))
        rid = self.cfg.round_id
        return {
            v: m.ConsistencyRequest(round_id=rid, recipient=v, survivors=self._u3) for v in self._u3
        }

    def _advance_r3(self, u4: frozenset[int]) -> dict[int, m.ServerMessage]:
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
        return out

    def _advance_r4(self, u5: frozenset[int]) -> dict[int, m.ServerMessage]:
        responses = {v: msg for v, msg in self._received.items() if isinstance(msg, m.UnmaskShares)}
        inputs = UnmaskInputs(
            cfg=self.cfg,
            survivors=self._u3,
            dropped=tuple(sorted(self._u2 - set(self._u3))),
            responses=responses,
            adverts=self._adverts,
            held=self._held,
        )
        try:
            remove_masks(self._acc, inputs)
        except CryptoError as exc:
            self._fail(f"could not remove masks: {exc}", AbortReason.RECONSTRUCTION_FAILED)
        self.result = self._acc
        return {}


_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.R0_ADVERTISE_KEYS, m.AdvertiseKeys): SecAggServer._on_advertise,
    (State.R1_SHARE_KEYS, m.EncryptedShares): SecAggServer._on_shares,
    (State.R2_MASKED_INPUT, m.MaskedInput): SecAggServer._on_masked_input,
    (State.R3_CONSISTENCY, m.ConsistencySignature): SecAggServer._on_consistency,
    (State.R4_UNMASK, m.UnmaskShares): SecAggServer._on_unmask,
}
"""The server's transition table: (state, client message type) -> collector."""

_ADVANCE: dict[State, Callable[[SecAggServer, frozenset[int]], dict[int, m.ServerMessage]]] = {
    State.R0_ADVERTISE_KEYS: SecAggServer._advance_r0,
    State.R1_SHARE_KEYS: SecAggServer._advance_r1,
    State.R2_MASKED_INPUT: SecAggServer._advance_r2,
    State.R3_CONSISTENCY: SecAggServer._advance_r3,
    State.R4_UNMASK: SecAggServer._advance_r4,
}
