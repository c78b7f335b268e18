"""Sans-IO CHRONOS client: one epoch of one client, with every secret behind a keystore.

Feed server messages to :meth:`ChronosClient.receive` and send what it returns. The machine
checks headers and order, hands the secret work to the injected
:class:`~qflare.protocol.chronos.keystore.ChronosKeystore`, and never sees a private key, a
pairwise seed or a share in the clear -- except the shares the keystore decides to release.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from qflare.crypto import RingVector, ring_dtype
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.invariants import config_is_sound
from qflare.protocol.chronos.keystore import ChronosKeystore
from qflare.protocol.chronos.states import State
from qflare.protocol.errors import (
    AbortReason,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from qflare.protocol.identity import EndorsedKey

_Handler = Callable[["ChronosClient", Any], m.ClientMessage]


class ChronosClient:
    """One client's side of one CHRONOS epoch (offline setup, then its rounds).

    Args:
        config: Public epoch parameters.
        keystore: Where this client's secrets live (software or enclave).
        directory: The participants' certificates and keystore-key endorsements (from the
            server; the keystore checks them against the enrollment authority).
    """

    def __init__(
        self,
        config: m.EpochConfig,
        keystore: ChronosKeystore,
        directory: Mapping[int, EndorsedKey],
    ) -> None:
        self.id = keystore.client_id
        config_is_sound(config, state="INIT")
        if self.id not in config.participants:
            raise LocalProtocolError("client is not a participant", state="INIT", client=self.id)
        self.cfg, self.keystore, self._directory = config, keystore, dict(directory)
        self.state = State.O0_ADVERTISE_KEYS
        self.partners: tuple[int, ...] = ()
        self.masked_rounds: list[int] = []
        self._input: RingVector | None = None

    # ---- public API -------------------------------------------------------------------------

    def start(self) -> m.EpochKeys:
        """O0: have the keystore make this epoch's keys; return the signed advertisement."""
        if self.state is not State.O0_ADVERTISE_KEYS:
            raise LocalProtocolError("start() called twice", state=self.state.value, client=self.id)
        msg = self.keystore.begin_epoch(self.cfg, self._directory)
        self.state = State.O0_REVEAL_SEED if self.cfg.sparse else State.O1_SHARE_KEYS
        return msg

    def set_input(self, vector: RingVector) -> None:
        """Hand over the next round's quantised ring vector (masked in place, then released)."""
        dtype = ring_dtype(self.cfg.modulus_bits)
        if vector.dtype != dtype or vector.shape != (self.cfg.dim,):
            raise LocalProtocolError(
                f"input must be {dtype} of shape ({self.cfg.dim},)",
                state=self.state.value,
                client=self.id,
            )
        self._input = vector

    def next_round(self) -> int | None:
        """The round the keystore will most likely mask next, or ``None`` past the epoch."""
        nxt = max(self.keystore.last_round() + 1, self.cfg.first_round)
        return nxt if nxt in self.cfg.round_ids else None

    def precompute_next(self) -> int | None:
        """Idle time: have the keystore combine the next round's masks; return that round."""
        if self.state not in (State.ON_MASKED_INPUT, State.ON_UNMASK):
            return None
        nxt = self.next_round()
        if nxt is not None:
            self.keystore.precompute(nxt)
        return nxt

    def receive(self, msg: m.ServerMessage) -> m.ClientMessage:
        """Process one server message and return the reply.

        Raises:
            RemoteProtocolError: unexpected, malformed, forged or inconsistent; the client
                moves to ``ABORTED``.
            LocalProtocolError: a round was reused or no input was set; also ``ABORTED``.
        """
        handler = _TRANSITIONS.get((self.state, type(msg)))
        if handler is None:
            self._abort(f"unexpected {type(msg).__name__}", AbortReason.UNEXPECTED_MESSAGE)
        try:
            self._check_header(msg)
            return handler(self, msg)
        except ProtocolError:
            self.state = State.ABORTED
            raise

    # ---- helpers ------------------------------------------------------------------------------

    def _abort(self, why: str, reason: AbortReason) -> NoReturn:
        state = self.state.value
        self.state = State.ABORTED
        raise RemoteProtocolError(why, state=state, client=self.id, reason=reason)

    def _check_header(self, msg: m.ServerMessage) -> None:
        if msg.epoch != self.cfg.epoch or msg.version != m.PROTOCOL_VERSION:
            self._abort(f"message for epoch {msg.epoch}", AbortReason.UNEXPECTED_MESSAGE)
        if msg.recipient != self.id:
            self._abort("message for another client", AbortReason.MALFORMED_MESSAGE)

    # ---- offline ------------------------------------------------------------------------------

    def _on_commitments(self, msg: m.SeedCommitments) -> m.EpochSeedReveal:
        reply = self.keystore.reveal_seed(msg)
        self.state = State.O1_SHARE_KEYS
        return reply

    def _on_directory(self, msg: m.KeyDirectory) -> m.EpochShares:
        reply = self.keystore.share_keys(msg)
        self.state = State.O2_CONFIRM
        return reply

    def _on_relay(self, msg: m.ShareRelay) -> m.EpochReady:
        reply = self.keystore.accept_shares(msg)
        self.partners = reply.partners
        self.state = State.ON_MASKED_INPUT
        return reply

    # ---- online -------------------------------------------------------------------------------

    def _on_round_start(self, msg: m.RoundStart) -> m.MaskedInput:
        if self.id in msg.excluded:
            self._abort("excluded until the next epoch", AbortReason.INVARIANT_VIOLATED)
        vector = self._input
        if vector is None:
            raise LocalProtocolError(
                "set_input() was not called before the round", state=self.state.value
            )
        masked = self.keystore.mask(msg.round_id, vector)
        self._input = None  # the plain update is not kept past the round
        self.masked_rounds.append(msg.round_id)
        self.state = State.ON_UNMASK
        return m.MaskedInput(
            epoch=self.cfg.epoch, round_id=msg.round_id, sender=self.id, vector=masked.tobytes()
        )

    def _on_unmask_request(self, msg: m.UnmaskRequest) -> m.UnmaskShares:
        reply = self.keystore.release(msg)
        self.state = State.ON_MASKED_INPUT
        return reply


_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.O0_REVEAL_SEED, m.SeedCommitments): ChronosClient._on_commitments,
    (State.O1_SHARE_KEYS, m.SeedCommitments): ChronosClient._on_commitments,
    (State.O1_SHARE_KEYS, m.KeyDirectory): ChronosClient._on_directory,
    (State.O2_CONFIRM, m.ShareRelay): ChronosClient._on_relay,
    (State.ON_MASKED_INPUT, m.RoundStart): ChronosClient._on_round_start,
    (State.ON_UNMASK, m.RoundStart): ChronosClient._on_round_start,
    (State.ON_UNMASK, m.UnmaskRequest): ChronosClient._on_unmask_request,
}
"""The client's transition table: (state, server message type) -> handler."""
