"""CHRONOS: phase-decoupled secure aggregation as sans-IO state machines.

Keys are agreed and secrets shared once per epoch, offline; every round of the epoch then costs
each client one masked upload (plus the unmask message in ``chronos-dm`` or after dropouts).
Secrets live behind :class:`ChronosKeystore` (software here, an enclave in ``qflare.tee``).
"""

from qflare.protocol.chronos.client import ChronosClient
from qflare.protocol.chronos.core import KeystoreCore
from qflare.protocol.chronos.invariants import (
    ReleaseLedger,
    config_is_sound,
    excluded_not_survivor,
    never_release_both,
    never_reuse_counter,
    partners_meet_threshold,
    round_in_epoch,
)
from qflare.protocol.chronos.keystore import (
    ChronosKeystore,
    MemoryCounter,
    RoundCounter,
    SoftwareKeystore,
)
from qflare.protocol.chronos.messages import EpochConfig, Mode
from qflare.protocol.chronos.results import RoundResult
from qflare.protocol.chronos.roster import relay_roster
from qflare.protocol.chronos.server import ChronosServer
from qflare.protocol.chronos.states import OFFLINE, ONLINE, State

__all__ = [
    "OFFLINE",
    "ONLINE",
    "ChronosClient",
    "ChronosKeystore",
    "ChronosServer",
    "EpochConfig",
    "KeystoreCore",
    "MemoryCounter",
    "Mode",
    "ReleaseLedger",
    "RoundCounter",
    "RoundResult",
    "SoftwareKeystore",
    "State",
    "config_is_sound",
    "excluded_not_survivor",
    "never_release_both",
    "never_reuse_counter",
    "partners_meet_threshold",
    "relay_roster",
    "round_in_epoch",
]
