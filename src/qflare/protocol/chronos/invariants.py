"""Named security invariants of CHRONOS. Each raises; each has its own tests.

The keystore (the enclave in a deployment) enforces the ones that protect secrets: a round id is
never reused, and for one (client, round) it releases either the self-mask share or the key
share, never both -- and once it released a client's key share, that client is excluded until
the next epoch: its self-mask shares are never released again and it is never a survivor.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import msgspec

from qflare.protocol.chronos.messages import EpochConfig
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.policy import config_is_well_formed
from qflare.protocol.secagg.invariants import survivors_and_dropped_disjoint

__all__ = [
    "LedgerState",
    "ReleaseLedger",
    "config_is_sound",
    "excluded_not_survivor",
    "never_release_both",
    "never_reuse_counter",
    "partners_meet_threshold",
    "round_in_epoch",
    "survivors_and_dropped_disjoint",
]


def config_is_sound(cfg: EpochConfig, *, state: str) -> None:
    """An epoch configuration is usable, and ``chronos-dm`` has ``2t > min(k, n)``.

    With a majority threshold no two disjoint sets of ``t`` holders exist among a client's at
    most ``k`` share holders, so a server cannot collect both kinds of share of one (client,
    round) from honest holders even by showing them different survivor sets.

    Raises:
        LocalProtocolError: the configuration is malformed.
    """
    n = len(cfg.participants)
    closed = min(cfg.k, n)
    config_is_well_formed(
        "epoch",
        cfg.participants,
        cfg.dim,
        cfg.modulus_bits,
        cfg.signature_scheme,
        [
            (n < 2, "need at least two participants"),
            (not 1 <= cfg.t <= closed or cfg.k < 1, f"threshold {cfg.t} outside [1, {closed}]"),
            (cfg.first_round < 1 or cfg.rounds < 1, "rounds must be positive"),
            (cfg.double_masking and 2 * cfg.t <= closed, f"chronos-dm needs 2t > {closed}"),
        ],
        state=state,
    )


def never_reuse_counter(last: int, round_id: int, *, state: str, client: int | None = None) -> None:
    """A round id is used once: masking for ``round_id`` needs ``round_id > last``.

    Raises:
        LocalProtocolError: ``round_id`` is not above the counter.
    """
    if round_id <= last:
        raise LocalProtocolError(
            f"round {round_id} is not above the round counter {last}",
            state=state,
            client=client,
            reason=AbortReason.ROUND_REUSED,
            http_status=409,
        )


def round_in_epoch(cfg: EpochConfig, round_id: int, *, state: str, client: int | None) -> None:
    """A round id must belong to the epoch whose keys mask it.

    Raises:
        RemoteProtocolError: the round is outside the epoch.
    """
    if round_id not in cfg.round_ids:
        raise RemoteProtocolError(
            f"round {round_id} is not in epoch {cfg.epoch} ({cfg.round_ids})",
            state=state,
            client=client,
            reason=AbortReason.UNEXPECTED_MESSAGE,
        )


def partners_meet_threshold(
    partners: Collection[int], threshold: int, *, state: str, client: int | None
) -> None:
    """A client masks only if its shares have at least ``t`` holders (partners and itself).

    Raises:
        RemoteProtocolError: too few partners.
    """
    if len(partners) + 1 < threshold:
        raise RemoteProtocolError(
            f"{len(partners)} partners cannot hold {threshold} shares",
            state=state,
            client=client,
            reason=AbortReason.TOO_FEW_CLIENTS,
        )


def _violation(why: str, owners: Iterable[int], state: str) -> RemoteProtocolError:
    bad = sorted(owners)
    return RemoteProtocolError(
        f"{why}: clients {bad}",
        state=state,
        client=bad[0],
        reason=AbortReason.INVARIANT_VIOLATED,
        http_status=409,
    )


def excluded_not_survivor(
    excluded: Collection[int], survivors: Collection[int], *, state: str
) -> None:
    """A client whose key share was released this epoch is never counted as a survivor again.

    Raises:
        RemoteProtocolError: an excluded client is listed as a survivor.
    """
    back = set(excluded) & set(survivors)
    if back:
        raise _violation("excluded until the next epoch but listed as survivors", back, state)


class LedgerState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a keystore has released this epoch (persisted, e.g. sealed by the enclave)."""

    self_mask: tuple[tuple[int, int], ...] = ()
    key: tuple[tuple[int, int], ...] = ()
    rounds: tuple[int, ...] = ()


def never_release_both(
    ledger: LedgerState,
    round_id: int,
    self_mask_owners: Collection[int],
    key_owners: Collection[int],
    *,
    state: str,
) -> None:
    """For one (client, round): the self-mask share or the key share, never both.

    Across rounds: once a client's key share was released, none of its self-mask shares is
    released again in the epoch (the client is excluded until the next epoch).

    Raises:
        RemoteProtocolError: the release would give away both kinds for some client.
    """
    sm, ks = set(self_mask_owners), set(key_owners)
    released_sm = {o for o, r in ledger.self_mask if r == round_id}
    released_key = {o for o, r in ledger.key if r == round_id}
    excluded = {o for o, _ in ledger.key}
    both = (sm & ks) | (sm & released_key) | (ks & released_sm)
    if both:
        raise _violation("asked for both shares of one round", both, state)
    if sm & excluded:
        raise _violation("asked for self-mask shares of excluded clients", sm & excluded, state)


class ReleaseLedger:
    """A keystore's memory of released shares, one epoch long.

    Args:
        state: A persisted ledger to resume from.
    """

    def __init__(self, state: LedgerState | None = None) -> None:
        self._state = state or LedgerState()

    @property
    def state(self) -> LedgerState:
        """The ledger, for persistence."""
        return self._state

    @property
    def excluded(self) -> frozenset[int]:
        """Clients whose key share was released this epoch."""
        return frozenset(o for o, _ in self._state.key)

    def record(
        self, round_id: int, self_mask: Iterable[int], key: Iterable[int], *, state: str
    ) -> None:
        """Record one release after checking the invariants (once per round).

        Raises:
            RemoteProtocolError: the round was already answered or shares would leak both ways.
        """
        sm, ks = sorted(set(self_mask)), sorted(set(key))
        if round_id in self._state.rounds:
            raise RemoteProtocolError(
                f"shares of round {round_id} were already released",
                state=state,
                reason=AbortReason.ROUND_REUSED,
                http_status=409,
            )
        never_release_both(self._state, round_id, sm, ks, state=state)
        self._state = LedgerState(
            self_mask=(*self._state.self_mask, *((o, round_id) for o in sm)),
            key=(*self._state.key, *((o, round_id) for o in ks)),
            rounds=(*self._state.rounds, round_id),
        )
