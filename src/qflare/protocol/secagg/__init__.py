"""SecAgg (Bonawitz et al. 2017) and SecAgg+ (Bell et al. 2020) as sans-IO state machines."""

from qflare.protocol.secagg.client import SecAggClient
from qflare.protocol.secagg.invariants import (
    ReleaseLog,
    RoundRegistry,
    never_release_both_shares,
    never_reuse_round,
    survivors_and_dropped_disjoint,
)
from qflare.protocol.secagg.server import SecAggServer
from qflare.protocol.secagg.states import ROUNDS, State

__all__ = [
    "ROUNDS",
    "ReleaseLog",
    "RoundRegistry",
    "SecAggClient",
    "SecAggServer",
    "State",
    "never_release_both_shares",
    "never_reuse_round",
    "survivors_and_dropped_disjoint",
]
