"""Sans-IO CHRONOS server: one epoch -- offline setup, then its rounds -- with collect/advance.

``handle(msg)`` validates and stores one client message, ``ready()`` says whether every live
client answered, ``advance()`` closes the collecting state and returns the next messages by
recipient. Between rounds the server is ``ON_IDLE`` and :meth:`ChronosServer.open_round` starts
the next one. A failed round (too few survivors, failed reconstruction) raises and leaves the
epoch usable; a failed offline phase aborts the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import numpy as np

from qflare.crypto import CryptoError, MaskPrg, SecretBytes
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos import offline, recovery
from qflare.protocol.chronos.invariants import config_is_sound
from qflare.protocol.chronos.results import RoundResult, RunningRound
from qflare.protocol.chronos.roster import relay_roster
from qflare.protocol.chronos.states import State
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.graph import neighbourhoods

_Handler = Callable[["ChronosServer", Any], None]


class ChronosServer:
    """The server's side of one CHRONOS epoch.

    Args:
        config: Public epoch parameters.
        identities: Identity public keys of the participants.
        verify_signatures: Check O0 signatures on arrival (the clients' keystores check too).
    """

    def __init__(
        self,
        config: m.EpochConfig,
        identities: Mapping[int, bytes],
        *,
        verify_signatures: bool = True,
    ) -> None:
        config_is_sound(config, state="INIT")
        self.cfg, self.state = config, State.O0_ADVERTISE_KEYS
        self.abort_reason: AbortReason | None = None
        self._identities, self._verify = identities, verify_signatures
        self._nbrs = neighbourhoods(config.participants, config.k, config.graph_seed)
        self._expected: set[int] = set(config.participants)
        self._received: dict[int, m.ClientMessage] = {}
        self.excluded: dict[int, str] = {}
        self._adverts: dict[int, m.EpochKeys] = {}
        self._directory: dict[int, frozenset[int]] = {}
        self._ciphertexts: dict[int, dict[int, bytes]] = {}
        self.partners: dict[int, frozenset[int]] = {}
        self.roster: frozenset[int] = frozenset()
        self._recovered: dict[int, SecretBytes] = {}
        self._round: RunningRound | None = None
        self._last_round = 0
        self._prg = MaskPrg(config.dim, config.modulus_bits)
        self.results: list[RoundResult] = []

    # ---- collect ----------------------------------------------------------------------------

    def handle(self, msg: m.ClientMessage) -> None:
        """Validate and store one client message.

        Raises:
            RemoteProtocolError: unexpected, malformed, replayed, forged, or from an excluded
                client; the sender is dropped from the current step.
        """
        sender = msg.sender
        if sender not in self._nbrs:
            raise RemoteProtocolError("sender is not a participant", state=self.state.value)
        if self._received.get(sender) == msg:
            return  # an identical retry is idempotent
        handler = _TRANSITIONS.get((self.state, type(msg)))
        try:
            if sender in self.excluded and self.state in (State.ON_MASKED_INPUT, State.ON_UNMASK):
                self._reject(sender, "client is excluded until the next epoch")
            if handler is None:
                self._reject(sender, f"unexpected {type(msg).__name__}")
            self._check_message(msg)
            handler(self, msg)
        except RemoteProtocolError:
            self._expected.discard(sender)
            raise
        self._received[sender] = msg

    def _check_message(self, msg: m.ClientMessage) -> None:
        sender, rnd = msg.sender, self._round
        if msg.epoch != self.cfg.epoch or msg.version != m.PROTOCOL_VERSION:
            self._reject(sender, f"message for epoch {msg.epoch}")
        if isinstance(msg, m.MaskedInput | m.UnmaskShares) and (
            rnd is None or msg.round_id != rnd.round_id
        ):
            self._reject(sender, f"message for round {msg.round_id}")
        if sender not in self._expected or sender in self._received:
            self._reject(sender, "client is not expected to send now")

    def drop(self, client: int) -> None:
        """Mark a client as silent for the current step (its deadline passed)."""
        if client in self._expected and client not in self._received:
            self._expected.discard(client)

    def pending(self) -> frozenset[int]:
        """Clients the current step is still waiting for."""
        return frozenset(self._expected - set(self._received))

    def ready(self) -> bool:
        """True when every live client of a collecting state has answered."""
        collecting = self.state in _ADVANCE
        return collecting and not self.pending()

    # ---- advance ----------------------------------------------------------------------------

    def advance(self) -> dict[int, m.ServerMessage]:
        """Close the collecting state; return the next messages by recipient.

        Clients that have not answered are dropouts. Closing the last online step stores the
        round's :class:`RoundResult` in :attr:`results` and returns an empty mapping.

        Raises:
            LocalProtocolError: nothing is being collected.
            RemoteProtocolError: too few clients or a failed reconstruction; offline the epoch
                is ``ABORTED``, online only the round fails.
        """
        step = _ADVANCE.get(self.state)
        if step is None:
            raise LocalProtocolError("nothing to advance", state=self.state.value)
        responders = frozenset(self._received)
        out = step(self, responders)
        self._received = {}
        self._expected = set(out)
        return out

    def open_round(self, round_id: int) -> dict[int, m.ServerMessage]:
        """Start round ``round_id`` (rounds only increase within the epoch).

        Raises:
            LocalProtocolError: not between rounds, or the round id is used or outside the epoch.
            RemoteProtocolError: fewer than ``t`` clients remain in the epoch (it aborts).
        """
        if self.state is not State.ON_IDLE:
            raise LocalProtocolError(
                "a round is running or the epoch is over", state=self.state.value
            )
        if round_id not in self.cfg.round_ids or round_id <= self._last_round:
            raise LocalProtocolError(
                f"round {round_id} is used or outside the epoch",
                state=self.state.value,
                reason=AbortReason.ROUND_REUSED,
            )
        active = sorted(self.roster - set(self.excluded))
        if len(active) < self.cfg.t:
            self._fail(f"{len(active)} clients left in the epoch", AbortReason.TOO_FEW_CLIENTS)
        self._last_round = round_id
        self._round = RunningRound(round_id, self._prg.zeros())
        self._received, self._expected = {}, set(active)
        self.state = State.ON_MASKED_INPUT
        gone = tuple(sorted(self.roster & set(self.excluded)))
        return {
            u: m.RoundStart(epoch=self.cfg.epoch, round_id=round_id, recipient=u, excluded=gone)
            for u in active
        }

    # ---- helpers ------------------------------------------------------------------------------

    def _reject(
        self, client: int, why: str, reason: AbortReason = AbortReason.UNEXPECTED_MESSAGE
    ) -> NoReturn:
        raise RemoteProtocolError(why, state=self.state.value, client=client, reason=reason)

    def _fail(self, why: str, reason: AbortReason) -> NoReturn:
        state = self.state.value
        self.state, self.abort_reason = State.ABORTED, reason
        raise RemoteProtocolError(why, state=state, reason=reason, http_status=409)

    def closed(self, client: int) -> frozenset[int]:
        """Closed neighbourhood of ``client`` in this epoch's graph."""
        return self._nbrs[client] | {client}

    def _exclude(self, clients: Iterable[int], why: str) -> None:
        for c in clients:
            self.excluded.setdefault(c, why)

    # ---- offline collectors -------------------------------------------------------------------

    def _on_keys(self, msg: m.EpochKeys) -> None:
        pks = (msg.enc_pk, *msg.mask_pks)
        if len(msg.mask_pks) != self.cfg.key_count or any(len(pk) != 32 for pk in pks):
            self._reject(
                msg.sender, "public keys have the wrong shape", AbortReason.MALFORMED_MESSAGE
            )
        if self._verify:
            offline.verify_advertisements(self.cfg, self._identities, [msg], state=self.state)
        self._adverts[msg.sender] = msg

    def _on_shares(self, msg: m.EpochShares) -> None:
        if set(msg.ciphertexts) != self._directory[msg.sender] - {msg.sender}:
            self._reject(
                msg.sender, "ciphertexts do not match the directory", AbortReason.MALFORMED_MESSAGE
            )
        self._ciphertexts[msg.sender] = dict(msg.ciphertexts)

    def _on_ready(self, msg: m.EpochReady) -> None:
        if frozenset(msg.partners) != self.partners.get(msg.sender):
            self._reject(
                msg.sender, "partners differ from the relay", AbortReason.INCONSISTENT_VIEW
            )

    # ---- offline advance steps ----------------------------------------------------------------

    def _advance_o0(self, u1: frozenset[int]) -> dict[int, m.ServerMessage]:
        self._exclude(set(self.cfg.participants) - u1, "silent in O0")
        out: dict[int, m.ServerMessage] = {}
        for u in sorted(u1):
            directory = self.closed(u) & u1
            if len(directory) < self.cfg.t:
                self._exclude([u], "too few neighbours advertised keys")
                continue
            self._directory[u] = directory
            entries = tuple(self._adverts[v] for v in sorted(directory))
            out[u] = m.KeyDirectory(epoch=self.cfg.epoch, recipient=u, entries=entries)
        if len(out) < self.cfg.t:
            self._fail(f"{len(out)} clients advertised keys", AbortReason.TOO_FEW_CLIENTS)
        self.state = State.O1_SHARE_KEYS
        return out

    def _advance_o1(self, u2: frozenset[int]) -> dict[int, m.ServerMessage]:
        self._exclude(set(self._directory) - u2, "silent in O1")
        self.partners = relay_roster(self._directory, u2, self.cfg.t)
        self.roster = frozenset(self.partners)
        self._exclude(u2 - self.roster, "too few partners shared keys")
        if len(self.roster) < self.cfg.t:
            self._fail(f"{len(self.roster)} clients in the roster", AbortReason.TOO_FEW_CLIENTS)
        out: dict[int, m.ServerMessage] = {
            v: m.ShareRelay(
                epoch=self.cfg.epoch,
                recipient=v,
                ciphertexts={w: self._ciphertexts[w][v] for w in sorted(self.partners[v])},
            )
            for v in sorted(self.roster)
        }
        self._ciphertexts = {}
        self.state = State.O2_CONFIRM
        return out

    def _advance_o2(self, u3: frozenset[int]) -> dict[int, m.ServerMessage]:
        self.state = State.ON_IDLE  # silent clients stay in the roster: they may drop later
        return {}

    # ---- online collectors and steps ----------------------------------------------------------

    def _current(self) -> RunningRound:
        if self._round is None:
            raise LocalProtocolError("no round is running", state=self.state.value)
        return self._round

    def _on_masked_input(self, msg: m.MaskedInput) -> None:
        acc = self._current().acc
        if len(msg.vector) != acc.nbytes:
            self._reject(
                msg.sender, f"vector has {len(msg.vector)} bytes", AbortReason.MALFORMED_MESSAGE
            )
        np.add(acc, np.frombuffer(msg.vector, dtype=acc.dtype), out=acc)

    def _on_unmask(self, msg: m.UnmaskShares) -> None:
        rnd = self._current()
        holders = self.partners[msg.sender] | {msg.sender}
        alive = holders & rnd.survivors if self.cfg.double_masking else frozenset()
        wanted = self.partners[msg.sender] & set(rnd.listed)
        if set(msg.self_mask_shares) != alive or set(msg.key_shares) != wanted:
            self._reject(
                msg.sender, "unmask shares do not match the request", AbortReason.MALFORMED_MESSAGE
            )
        rnd.responses[msg.sender] = msg

    def _to_list(self, survivors: frozenset[int]) -> tuple[int, ...]:
        """Non-survivors whose keys this round needs: those with a surviving partner."""
        known = set(self._recovered) if not self.cfg.double_masking else set()
        return tuple(
            d for d in sorted(self.roster - survivors - known) if self.partners[d] & survivors
        )

    def _advance_masked(self, survivors: frozenset[int]) -> dict[int, m.ServerMessage]:
        rnd = self._current()
        rnd.survivors = survivors
        if len(survivors) < self.cfg.t:
            self._round_failed(
                f"{len(survivors)} masked inputs arrived", AbortReason.TOO_FEW_CLIENTS
            )
        rnd.listed = self._to_list(survivors)
        if not self.cfg.double_masking and not rnd.listed:
            return self._finish({}, unmask_step=False)
        self._exclude(rnd.listed, f"keys released in round {rnd.round_id}")
        self.state = State.ON_UNMASK
        alive = tuple(sorted(survivors))
        return {
            v: m.UnmaskRequest(
                epoch=self.cfg.epoch,
                round_id=rnd.round_id,
                recipient=v,
                survivors=alive,
                dropped=rnd.listed,
            )
            for v in alive
        }

    def _advance_unmask(self, _: frozenset[int]) -> dict[int, m.ServerMessage]:
        rnd, cfg = self._current(), self.cfg
        try:
            if cfg.double_masking:
                recovery.remove_self_masks(
                    rnd.acc, cfg, rnd.round_id, rnd.survivors, rnd.responses, self._prg
                )
            found = {
                d: recovery.reconstruct_key(cfg, rnd.responses, self._adverts[d], rnd.round_id)
                for d in rnd.listed
            }
        except CryptoError as exc:
            self._round_failed(f"could not remove masks: {exc}", AbortReason.RECONSTRUCTION_FAILED)
        return self._finish(found, unmask_step=True)

    def _finish(
        self, found: dict[int, SecretBytes], *, unmask_step: bool
    ) -> dict[int, m.ServerMessage]:
        rnd = self._current()
        if not self.cfg.double_masking:
            self._recovered.update(found)
            found = dict(self._recovered)
        recovery.remove_pair_masks(
            rnd.acc,
            self.cfg,
            rnd.round_id,
            found,
            rnd.survivors,
            self.partners,
            self._adverts,
            self._prg,
        )
        self._close_round(
            RoundResult(
                round_id=rnd.round_id,
                total=rnd.acc,
                survivors=tuple(sorted(rnd.survivors)),
                dropped=tuple(sorted(self.roster - rnd.survivors)),
                recovered=rnd.listed,
                unmask_step=unmask_step,
            )
        )
        return {}

    def _round_failed(self, why: str, reason: AbortReason) -> NoReturn:
        state, rnd = self.state.value, self._current()
        self._close_round(
            RoundResult(round_id=rnd.round_id, recovered=rnd.listed, abort_reason=reason)
        )
        raise RemoteProtocolError(why, state=state, reason=reason, http_status=409)

    def _close_round(self, result: RoundResult) -> None:
        self.results.append(result)
        self._round, self._received, self._expected = None, {}, set()
        last = result.round_id == self.cfg.round_ids[-1]
        self.state = State.EPOCH_OVER if last else State.ON_IDLE


_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.O0_ADVERTISE_KEYS, m.EpochKeys): ChronosServer._on_keys,
    (State.O1_SHARE_KEYS, m.EpochShares): ChronosServer._on_shares,
    (State.O2_CONFIRM, m.EpochReady): ChronosServer._on_ready,
    (State.ON_MASKED_INPUT, m.MaskedInput): ChronosServer._on_masked_input,
    (State.ON_UNMASK, m.UnmaskShares): ChronosServer._on_unmask,
}
"""The server's transition table: (state, client message type) -> collector."""

_ADVANCE: dict[State, Callable[[ChronosServer, frozenset[int]], dict[int, m.ServerMessage]]] = {
    State.O0_ADVERTISE_KEYS: ChronosServer._advance_o0,
    State.O1_SHARE_KEYS: ChronosServer._advance_o1,
    State.O2_CONFIRM: ChronosServer._advance_o2,
    State.ON_MASKED_INPUT: ChronosServer._advance_masked,
    State.ON_UNMASK: ChronosServer._advance_unmask,
}
"""The server's advance table: collecting state -> step."""
