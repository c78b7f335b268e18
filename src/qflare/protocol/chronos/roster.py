"""The epoch roster: who masks with whom, fixed once at the end of the offline phase."""

from __future__ import annotations

from collections.abc import Mapping


def relay_roster(
    directory: Mapping[int, frozenset[int]], shared: frozenset[int], threshold: int
) -> dict[int, frozenset[int]]:
    """Mask partners of every client that stays in the epoch.

    A client ``v`` that sent its shares holds shares of each directory neighbour that sent
    theirs; those neighbours are its partners. Clients whose shares would have fewer than
    ``threshold`` holders (partners plus themselves) are removed, which can push others below
    the threshold, so the removal repeats until nothing changes. The result is symmetric:
    ``w in partners[v]`` iff ``v in partners[w]``.

    Args:
        directory: Client -> its closed neighbourhood among the clients that advertised keys.
        shared: Clients whose encrypted shares arrived.
        threshold: Shamir threshold ``t``.
    """
    roster = {v for v in shared if v in directory}
    while True:
        partners = {v: frozenset(directory[v] & roster - {v}) for v in roster}
        short = {v for v, ps in partners.items() if len(ps) + 1 < threshold}
        if not short:
            return partners
        roster -= short
