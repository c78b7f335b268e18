"""Shared pieces of the adversary suite: capture what reaches the server, check sums."""

from __future__ import annotations

import numpy as np

from qflare.protocol import messages as m
from qflare.protocol.messages import RoundConfig
from qflare.sim.cohort import CohortResult, expected_sum
from tests.protocol.helpers import inputs


def exact(res: CohortResult, cfg: RoundConfig) -> bool:
    """The round completed with exactly the modular sum of its survivors' inputs."""
    return res.total is not None and bool(
        np.array_equal(res.total, expected_sum(inputs(cfg.dim), res.survivors, cfg.dim, 32))
    )


class Loot:
    """Everything the (malicious) server collects from the clients, by type."""

    def __init__(self) -> None:
        self.unmask: dict[int, m.UnmaskShares] = {}
        self.shares: dict[int, m.EncryptedShares] = {}
        self.masked: dict[int, m.MaskedInput] = {}

    def __call__(self, msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.UnmaskShares):
            self.unmask[msg.sender] = msg
        elif isinstance(msg, m.EncryptedShares):
            self.shares[msg.sender] = msg
        elif isinstance(msg, m.MaskedInput):
            self.masked[msg.sender] = msg
        return msg

    def shares_of(self, owner: int) -> tuple[int, int]:
        """(#self-mask shares, #key shares) of ``owner`` that reached the server."""
        sm = sum(owner in r.self_mask_shares for r in self.unmask.values())
        ks = sum(owner in r.key_shares for r in self.unmask.values())
        return sm, ks

    def both_secrets_of(self, owner: int, t: int) -> bool:
        """Whether the server holds t self-mask shares AND t key shares of ``owner``."""
        sm, ks = self.shares_of(owner)
        return sm >= t and ks >= t
