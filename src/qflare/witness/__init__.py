"""The ledger witness process (``qflare witness``): cosigns the server's heads that extend history.

A witness is run by someone other than the server's operator, with its own ML-DSA-65 key. It pins
the server's ledger key, remembers the last head it cosigned (persisted before a cosignature
leaves it), and cosigns a new head only with a consistency proof from that one. Nodes and
auditors accept a head only when a quorum of the witnesses they trust cosigned it.
"""

from qflare.witness.app import create_witness_app
from qflare.witness.service import WitnessService
from qflare.witness.store import WitnessDir, WitnessDirError

__all__ = ["WitnessDir", "WitnessDirError", "WitnessService", "create_witness_app"]
