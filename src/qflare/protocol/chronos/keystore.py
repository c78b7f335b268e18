"""The keystore interface of a CHRONOS client, its round counter, and the software keystore.

A :class:`~qflare.protocol.chronos.client.ChronosClient` holds no secret. Everything secret --
the epoch's private keys, pairwise keys, self-mask secrets, the shares held for neighbours, the
round counter and the release ledger -- sits behind :class:`ChronosKeystore`. Two
implementations share one body of code (:class:`~qflare.protocol.chronos.core.KeystoreCore`):

* :class:`SoftwareKeystore` runs it in the caller's process (tests, simulations, and the
  "no TEE" baseline);
* ``qflare.tee.chronos_host.EnclaveKeystore`` runs it inside the enclave process and talks to it
  over the command channel; only public keys, ciphertexts, released shares and masked vectors
  come out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from qflare.crypto import MaskPrg, RingVector, Rng, Signer
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.core import KeystoreCore
from qflare.protocol.chronos.core_state import RoundCounter
from qflare.protocol.chronos.invariants import never_reuse_counter
from qflare.protocol.chronos.states import State
from qflare.protocol.identity import AuthorityKey, EndorsedKey
from qflare.protocol.policy import ClientPolicy

__all__ = ["ChronosKeystore", "MemoryCounter", "RoundCounter", "SoftwareKeystore"]


class MemoryCounter:
    """An in-memory :class:`RoundCounter` (it forgets on restart: software baseline only).

    Args:
        value: Starting value.
    """

    def __init__(self, value: int = 0) -> None:
        self._value = value

    def read(self) -> int:
        """Current value."""
        return self._value

    def advance(self, to_value: int) -> int:
        """Move forward to ``to_value``.

        Raises:
            LocalProtocolError: ``to_value`` is not above the current value.
        """
        if to_value <= self._value:
            never_reuse_counter(self._value, to_value, state=State.ON_MASKED_INPUT.value)
        self._value = to_value
        return to_value


class ChronosKeystore(Protocol):
    """Everything secret a CHRONOS client does. Each method refuses misuse by raising.

    Refusals are :class:`~qflare.protocol.errors.ProtocolError` s: ``LocalProtocolError`` for
    a reused round (``reason=ROUND_REUSED``) or a call out of order, ``RemoteProtocolError``
    for a forged, inconsistent or invariant-violating server message.
    """

    @property
    def rejected(self) -> dict[int, str]:
        """Peers left out of this epoch (bad certificate, signature, key or shares), and why."""
        ...

    @property
    def client_id(self) -> int:
        """The client this keystore belongs to."""
        ...

    @property
    def identity_public_key(self) -> bytes:
        """Public half of the device identity key that signs epoch keys."""
        ...

    def last_round(self) -> int:
        """The round counter: the last round this keystore masked for (0 if none)."""
        ...

    def begin_epoch(
        self, config: m.EpochConfig, directory: Mapping[int, EndorsedKey]
    ) -> m.EpochKeys:
        """Offline O0: check the epoch and the peers' identities; make fresh keys; sign them."""
        ...

    def reveal_seed(self, msg: m.SeedCommitments) -> m.EpochSeedReveal:
        """Offline O0 (sparse graphs): check the seed commitments; reveal our contribution."""
        ...

    def share_keys(self, directory: m.KeyDirectory) -> m.EpochShares:
        """Offline O1: verify neighbours' keys, derive pairwise keys, encrypt Shamir shares."""
        ...

    def accept_shares(self, relay: m.ShareRelay) -> m.EpochReady:
        """Offline O2: decrypt and keep neighbours' shares; their senders become partners."""
        ...

    def precompute(self, round_id: int) -> None:
        """Idle time: combine round ``round_id``'s masks into one vector kept in the keystore."""
        ...

    def mask(self, round_id: int, vector: RingVector) -> RingVector:
        """Online: advance the counter to ``round_id`` (refusing ``<=`` last), mask in place."""
        ...

    def release(self, request: m.UnmaskRequest) -> m.UnmaskShares:
        """Online: release shares for the round just masked, enforcing the release ledger."""
        ...


class SoftwareKeystore(KeystoreCore):
    """The keystore run in the caller's process: no enclave, an in-memory counter by default.

    Secrets live in ordinary process memory here; this is the baseline the enclave-backed
    keystore improves on, and the fast implementation for tests and simulations.

    Args:
        client_id: The client's id.
        signer: The device identity key.
        rng: Randomness for keys, secrets and Shamir polynomials.
        authority: The enrollment authority key peers' identities are checked against.
        policy: The client's policy for epoch parameters.
        counter: The round counter (default: a fresh :class:`MemoryCounter`).
        prg: Mask expander to reuse (its buffer is allocated once per device).
        max_precomputed: How many rounds of combined masks to keep (memory bound).
    """

    def __init__(
        self,
        client_id: int,
        signer: Signer,
        rng: Rng,
        *,
        authority: AuthorityKey,
        policy: ClientPolicy | None = None,
        counter: RoundCounter | None = None,
        prg: MaskPrg | None = None,
        max_precomputed: int = 1,
    ) -> None:
        super().__init__(
            client_id,
            signer,
            rng,
            counter or MemoryCounter(),
            authority=authority,
            policy=policy,
            prg=prg,
            max_precomputed=max_precomputed,
        )
