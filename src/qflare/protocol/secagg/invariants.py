"""Named security invariants of the SecAgg client. Each raises; each has its own tests."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.messages import RoundConfig
from qflare.protocol.policy import config_is_well_formed


class ReleaseLog:
    """What a client has released in one round: owner ids of self-mask and key shares."""

    def __init__(self) -> None:
        self.self_mask: set[int] = set()
        self.key: set[int] = set()

    def record(self, *, self_mask: Iterable[int], key: Iterable[int], state: str) -> None:
        """Record a release after checking :func:`never_release_both_shares`."""
        sm, k = set(self_mask), set(key)
        never_release_both_shares(self.self_mask | sm, self.key | k, state=state)
        self.self_mask |= sm
        self.key |= k


def never_release_both_shares(
    self_mask_owners: Collection[int], key_owners: Collection[int], *, state: str
) -> None:
    """A client never releases both the self-mask share and the key share of one peer.

    Raises:
        RemoteProtocolError: some owner appears in both sets.
    """
    both = set(self_mask_owners) & set(key_owners)
    if both:
        raise RemoteProtocolError(
            f"server asked for both shares of clients {sorted(both)}",
            state=state,
            client=min(both),
            reason=AbortReason.INVARIANT_VIOLATED,
            http_status=409,
        )


def survivors_and_dropped_disjoint(
    survivors: Collection[int], dropped: Collection[int], threshold: int, *, state: str
) -> None:
    """An unmask request is refused if its survivor and dropped sets intersect or U3 < t.

    Raises:
        RemoteProtocolError: overlapping sets or too few survivors.
    """
    overlap = set(survivors) & set(dropped)
    if overlap:
        raise RemoteProtocolError(
            f"clients {sorted(overlap)} are both survivors and dropped",
            state=state,
            client=min(overlap),
            reason=AbortReason.INVARIANT_VIOLATED,
            http_status=409,
        )
    if len(survivors) < threshold:
        raise RemoteProtocolError(
            f"{len(survivors)} survivors is below the threshold {threshold}",
            state=state,
            reason=AbortReason.TOO_FEW_CLIENTS,
            http_status=409,
        )


class RoundRegistry:
    """Round ids a client has taken part in; persisted by the node, injected into the machine."""

    def __init__(self, used: Iterable[tuple[str, int]] = ()) -> None:
        self._used: set[tuple[str, int]] = set(used)

    def claim(self, session: str, round_id: int, *, state: str) -> None:
        """Never reuse a round id: claim ``(session, round_id)`` once.

        Raises:
            LocalProtocolError: the round id was already used by this client.
        """
        never_reuse_round(self._used, session, round_id, state=state)
        self._used.add((session, round_id))

    def used(self) -> frozenset[tuple[str, int]]:
        """All claimed (session, round) pairs, for persistence."""
        return frozenset(self._used)


def never_reuse_round(
    used: Collection[tuple[str, int]], session: str, round_id: int, *, state: str
) -> None:
    """A client never takes part twice in the same (session, round) — fresh masks every round.

    Raises:
        LocalProtocolError: the round was already used.
    """
    if (session, round_id) in used:
        raise LocalProtocolError(
            f"round {round_id} of session {session!r} was already used by this client",
            state=state,
            reason=AbortReason.ROUND_REUSED,
            http_status=409,
        )


def round_config_is_sound(cfg: RoundConfig, *, state: str) -> None:
    """A round configuration is well formed: sorted distinct non-negative ids, a ring, a scheme.

    (Whether its ``k`` and ``t`` are strong enough is the client's policy:
    :func:`qflare.protocol.policy.check_round_params`.)

    Raises:
        LocalProtocolError: ``PARAMS_REFUSED`` naming what is malformed.
    """
    config_is_well_formed(
        "round",
        cfg.participants,
        cfg.dim,
        cfg.modulus_bits,
        cfg.signature_scheme,
        [(cfg.round_id < 0, "round id must be non-negative")],
        state=state,
    )
