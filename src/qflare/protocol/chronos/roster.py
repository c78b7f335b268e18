"""The epoch roster: who masks with whom, fixed once at the end of the offline phase."""

from __future__ import annotations

from collections.abc import Mapping


def relay_roster(
    directory: Mapping[int, frozenset[int]],
    shared_with: Mapping[int, frozenset[int]],
    threshold: int,
) -> dict[int, frozenset[int]]:
    """Mask partners of every client that stays in the epoch.

    Two directory neighbours that both sent their shares *to each other* are partners (a client
    leaves out a neighbour whose advertisement it rejected, and the relation must stay
    symmetric). Clients whose shares would have fewer than ``threshold`` holders (partners plus
    themselves) are removed, which can push others below the threshold, so the removal repeats
    until nothing changes. The result is symmetric: ``w in partners[v]`` iff ``v in
    partners[w]``.

    Args:
        directory: Client -> its closed neighbourhood among the clients that advertised keys.
        shared_with: Client whose encrypted shares arrived -> the neighbours it encrypted to.
        threshold: Shamir threshold ``t``.
    """
    roster = {v for v in shared_with if v in directory}

    def mutual(v: int, w: int) -> bool:
        return w in shared_with[v] and v in shared_with[w]

    while True:
        partners = {
            v: frozenset(w for w in directory[v] & roster - {v} if mutual(v, w)) for v in roster
        }
        short = {v for v, ps in partners.items() if len(ps) + 1 < threshold}
        if not short:
            return partners
        roster -= short
