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

from qflare.crypto import MaskPrg, SecretBytes
from qflare.protocol.chronos import keys, offline, recovery
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.invariants import config_is_sound
from qflare.protocol.chronos.results import RoundResult, RunningRound
from qflare.protocol.chronos.roster import relay_roster
from qflare.protocol.chronos.states import State
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.graph import neighbourhoods
from qflare.protocol.seed import SeedCollector
from qflare.protocol.shares import COMMITMENT_BYTES

_Handler = Callable[["ChronosServer", Any], None]


class ChronosServer:
    """The server's side of one CHRONOS epoch.

    Args:
        config: Public epoch parameters.
        identities: Identity public keys of the participants.
        verify_signatures: Check O0 signatures on arrival (the clients' keystores check too).
        max_seed_restarts: Restarts of the graph-seed exchange before the epoch aborts.
    """

    def __init__(
        self,
        config: m.EpochConfig,
        identities: Mapping[int, bytes],
        *,
        verify_signatures: bool = True,
        max_seed_restarts: int = 2,
    ) -> None:
        config_is_sound(config, state="INIT")
        self.cfg, self.state = config, State.O0_ADVERTISE_KEYS
        self.abort_reason: AbortReason | None = None
        self._identities, self._verify = identities, verify_signatures
        self._participants = frozenset(config.participants)
        self._seed = SeedCollector(keys.scope(config), max_seed_restarts)
        self.graph_seed = b""
        self._nbrs: dict[int, frozenset[int]] = (
            {} if config.sparse else neighbourhoods(config.participants, config.k, b"")
        )
        self.culprits: dict[int, str] = {}
        self._commitments: dict[int, dict[int, bytes]] = {}
        self._self_commits: dict[int, tuple[bytes, ...]] = {}
        self._held: dict[int, frozenset[int]] = {}
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
        if sender not in self._participants:
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
        identities = self._identities if self._verify else {msg.sender: b""}
        why = offline.advertisement_problem(self.cfg, identities, msg)
        if why is not None and (self._verify or why.startswith("invalid")):
            bad_key = why.startswith("invalid")
            self._reject(
                msg.sender, why, AbortReason.BAD_KEY if bad_key else AbortReason.BAD_SIGNATURE
            )
        refused = self._seed.offer(msg.sender, msg.seed_commit, sparse=self.cfg.sparse)
        if refused is not None:
            self._reject(msg.sender, refused, AbortReason.MALFORMED_MESSAGE)
        self._adverts[msg.sender] = msg

    def _on_reveal(self, msg: m.EpochSeedReveal) -> None:
        try:
            self._seed.reveal(msg.sender, msg.attempt, msg.reveal, msg.next_commit)
        except ValueError as exc:
            self._reject(msg.sender, f"seed reveal refused: {exc}", AbortReason.MALFORMED_MESSAGE)

    def _on_shares(self, msg: m.EpochShares) -> None:
        holders = set(msg.ciphertexts)
        per_holder = self.cfg.share_count * COMMITMENT_BYTES
        dm_commits = self.cfg.rounds if self.cfg.double_masking else 0
        well_formed = (
            holders <= self._directory[msg.sender] - {msg.sender}
            and set(msg.commitments) == holders | {msg.sender}
            and all(len(c) == per_holder for c in msg.commitments.values())
            and len(msg.self_mask_commits) == dm_commits
            and all(len(c) == COMMITMENT_BYTES for c in msg.self_mask_commits)
        )
        if not well_formed:
            self._reject(
                msg.sender,
                "ciphertexts or commitments do not match the directory",
                AbortReason.MALFORMED_MESSAGE,
            )
        self._ciphertexts[msg.sender] = dict(msg.ciphertexts)
        self._commitments[msg.sender] = dict(msg.commitments)
        self._self_commits[msg.sender] = tuple(msg.self_mask_commits)

    def _on_ready(self, msg: m.EpochReady) -> None:
        partners = self.partners.get(msg.sender)
        if frozenset(msg.partners) != partners or not set(msg.missing) <= partners:
            self._reject(
                msg.sender, "partners differ from the relay", AbortReason.INCONSISTENT_VIEW
            )
        self._held[msg.sender] = (partners - set(msg.missing)) | {msg.sender}

    # ---- offline advance steps ----------------------------------------------------------------

    def _advance_o0(self, u1: frozenset[int]) -> dict[int, m.ServerMessage]:
        self._exclude(set(self.cfg.participants) - u1, "silent in O0")
        if len(u1) < self.cfg.t:
            self._fail(f"{len(u1)} clients advertised keys", AbortReason.TOO_FEW_CLIENTS)
        if not self.cfg.sparse:
            return self._directories(u1, {})
        self._seed.restrict(u1)
        self.state = State.O0_REVEAL_SEED
        return self._seed_round(u1)

    def _seed_round(self, members: frozenset[int]) -> dict[int, m.ServerMessage]:
        commits = dict(sorted(self._seed.commitments.items()))
        return {
            u: m.SeedCommitments(
                epoch=self.cfg.epoch, recipient=u, attempt=self._seed.attempt, commitments=commits
            )
            for u in sorted(members)
        }

    def _advance_seed(self, revealed: frozenset[int]) -> dict[int, m.ServerMessage]:
        self._exclude(set(self._seed.commitments) - revealed, "withheld its seed reveal")
        reveals = self._seed.reveals
        try:
            seed = self._seed.close()
        except ValueError as exc:
            self._fail(f"graph seed withheld: {exc}", AbortReason.SEED_WITHHELD)
        if seed is None:  # a restart among those who revealed
            if len(self._seed.commitments) < self.cfg.t:
                self._fail("too few clients revealed seeds", AbortReason.TOO_FEW_CLIENTS)
            return self._seed_round(frozenset(self._seed.commitments))
        self.graph_seed = seed
        self._nbrs = neighbourhoods(self.cfg.participants, self.cfg.k, seed)
        return self._directories(revealed, dict(sorted(reveals.items())))

    def _directories(
        self, u1: frozenset[int], reveals: dict[int, bytes]
    ) -> dict[int, m.ServerMessage]:
        out: dict[int, m.ServerMessage] = {}
        for u in sorted(u1):
            directory = self.closed(u) & u1
            if len(directory) < self.cfg.t:
                self._exclude([u], "too few neighbours advertised keys")
                continue
            self._directory[u] = directory
            entries = tuple(self._adverts[v] for v in sorted(directory))
            out[u] = m.KeyDirectory(
                epoch=self.cfg.epoch, recipient=u, entries=entries, reveals=reveals
            )
        if len(out) < self.cfg.t:
            self._fail(f"{len(out)} clients have enough neighbours", AbortReason.TOO_FEW_CLIENTS)
        self.state = State.O1_SHARE_KEYS
        return out

    def _advance_o1(self, u2: frozenset[int]) -> dict[int, m.ServerMessage]:
        self._exclude(set(self._directory) - u2, "silent in O1")
        shared_with = {v: frozenset(self._ciphertexts[v]) for v in u2}
        self.partners = relay_roster(self._directory, shared_with, self.cfg.t)
        self.roster = frozenset(self.partners)
        self._exclude(u2 - self.roster, "too few partners shared keys")
        if len(self.roster) < self.cfg.t:
            self._fail(f"{len(self.roster)} clients in the roster", AbortReason.TOO_FEW_CLIENTS)
        out: dict[int, m.ServerMessage] = {
            v: m.ShareRelay(
                epoch=self.cfg.epoch,
                recipient=v,
                ciphertexts={w: self._ciphertexts[w][v] for w in sorted(self.partners[v])},
                commitments={w: self._commitments[w][v] for w in sorted(self.partners[v])},
            )
            for v in sorted(self.roster)
        }
        self._ciphertexts = {}
        self.state = State.O2_CONFIRM
        return out

    def _advance_o2(self, u3: frozenset[int]) -> dict[int, m.ServerMessage]:
        self.state = State.ON_IDLE  # silent clients stay in the roster: they may drop later
        for v in self.roster - set(self._held):  # silent in O2: assume it holds all it was sent
            self._held[v] = self.partners[v] | {v}
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
        held = self._held.get(msg.sender, frozenset())
        alive = held & rnd.survivors if self.cfg.double_masking else frozenset()
        wanted = held & self.partners[msg.sender] & set(rnd.listed)
        if not set(msg.self_mask_shares) <= alive or not set(msg.key_shares) <= wanted:
            self._reject(
                msg.sender, "unmask shares do not match the request", AbortReason.MALFORMED_MESSAGE
            )
        rnd.responses[msg.sender] = msg  # shares are checked when a rebuilt secret fails

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
            secrets = (
                recovery.self_mask_secrets(
                    cfg,
                    rnd.round_id,
                    rnd.survivors,
                    rnd.responses,
                    self._self_commits,
                    self._commitments,
                    self.culprits,
                )
                if cfg.double_masking
                else {}
            )
            found = {
                d: recovery.reconstruct_key(
                    cfg,
                    rnd.responses,
                    self._adverts[d],
                    rnd.round_id,
                    self._commitments,
                    self.culprits,
                )
                for d in rnd.listed
            }
        except recovery.ReconstructionError as exc:
            if exc.proven:  # short of good shares is not proof of the owner's fault
                self.culprits.setdefault(exc.owner, f"round {rnd.round_id}: {exc}")
            self._round_failed(
                f"could not remove masks: {exc}", AbortReason.RECONSTRUCTION_FAILED, exc.owner
            )
        recovery.remove_self_masks(rnd.acc, cfg, rnd.round_id, secrets, self._prg)
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

    def _round_failed(self, why: str, reason: AbortReason, client: int | None = None) -> NoReturn:
        state, rnd = self.state.value, self._current()
        self._close_round(
            RoundResult(round_id=rnd.round_id, recovered=rnd.listed, abort_reason=reason)
        )
        raise RemoteProtocolError(why, state=state, client=client, reason=reason, http_status=409)

    def _close_round(self, result: RoundResult) -> None:
        self.results.append(result)
        self._round, self._received, self._expected = None, {}, set()
        last = result.round_id == self.cfg.round_ids[-1]
        self.state = State.EPOCH_OVER if last else State.ON_IDLE


_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.O0_ADVERTISE_KEYS, m.EpochKeys): ChronosServer._on_keys,
    (State.O0_REVEAL_SEED, m.EpochSeedReveal): ChronosServer._on_reveal,
    (State.O1_SHARE_KEYS, m.EpochShares): ChronosServer._on_shares,
    (State.O2_CONFIRM, m.EpochReady): ChronosServer._on_ready,
    (State.ON_MASKED_INPUT, m.MaskedInput): ChronosServer._on_masked_input,
    (State.ON_UNMASK, m.UnmaskShares): ChronosServer._on_unmask,
}
"""The server's transition table: (state, client message type) -> collector."""

_ADVANCE: dict[State, Callable[[ChronosServer, frozenset[int]], dict[int, m.ServerMessage]]] = {
    State.O0_ADVERTISE_KEYS: ChronosServer._advance_o0,
    State.O0_REVEAL_SEED: ChronosServer._advance_seed,
    State.O1_SHARE_KEYS: ChronosServer._advance_o1,
    State.O2_CONFIRM: ChronosServer._advance_o2,
    State.ON_MASKED_INPUT: ChronosServer._advance_masked,
    State.ON_UNMASK: ChronosServer._advance_unmask,
}
"""The server's advance table: collecting state -> step."""
