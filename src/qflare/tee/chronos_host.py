"""Host half of the CHRONOS trusted application: :class:`EnclaveKeystore`.

It implements :class:`~qflare.protocol.chronos.keystore.ChronosKeystore` by calling the TA of
:mod:`qflare.tee.chronos_ta` over the enclave's command channel, keeps the latest sealed state
(the host stores it; only the enclave can open it), and turns the TA's refusals back into the
same :class:`~qflare.protocol.errors.ProtocolError` s the software keystore raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np

from qflare.crypto import RingVector, SignatureScheme
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.core_state import PolicyState
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.identity import AuthorityKey, EndorsedKey, encode_authority_key
from qflare.protocol.policy import ClientPolicy
from qflare.tee import chronos_ta as ta
from qflare.tee.attestation import AttestationResult, AttestationVerifier, report_data_for
from qflare.tee.certs import SimulatedRootCa
from qflare.tee.errors import CounterReuse, TrustedAppError
from qflare.tee.interface import Enclave
from qflare.tee.sim import ChannelTap, SimEnclave
from qflare.tee.ta import Command, call

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)


def _reraise(exc: TrustedAppError) -> None:
    """Re-raise a TA refusal as the protocol error it stands for (other errors pass through)."""
    text = str(exc)
    if not text.startswith(ta.REFUSAL_PREFIX):
        return
    refusal = msgspec.json.decode(text[len(ta.REFUSAL_PREFIX) :], type=ta.Refusal)
    kind = LocalProtocolError if refusal.local else RemoteProtocolError
    raise kind(
        refusal.message,
        state=refusal.state,
        client=refusal.client,
        reason=AbortReason(refusal.reason),
    ) from None


class EnclaveKeystore:
    """A :class:`~qflare.protocol.chronos.ChronosKeystore` whose secrets stay in an enclave.

    Args:
        enclave: A running enclave with the :data:`~qflare.tee.chronos_ta.CHRONOS_TA` loaded.
        client_id: The device's client id.
        scheme: Identity signature scheme.
        sealed: The latest sealed state of this device (empty: provision it now).
        authority: The enrollment authority key to provision (ignored when resuming).
        policy: The client policy to provision (ignored when resuming).
        on_seal: Called with every new sealed state (e.g. to write it to disk).
    """

    def __init__(
        self,
        enclave: Enclave,
        client_id: int,
        *,
        scheme: SignatureScheme = SignatureScheme.MLDSA65,
        sealed: bytes = b"",
        authority: AuthorityKey | None = None,
        policy: ClientPolicy | None = None,
        on_seal: Callable[[bytes], None] | None = None,
    ) -> None:
        self._enclave, self._id, self._on_seal = enclave, client_id, on_seal
        params = ta.OpenParams(
            client_id=client_id,
            scheme=scheme,
            sealed=sealed,
            authority=encode_authority_key(authority) if authority is not None else b"",
            policy=PolicyState.of(policy or ClientPolicy()),
        )
        opened = self._call(ta.OPEN, params)
        self._identity = opened.identity_public_key
        self.rejected: dict[int, str] = {}  # peers the enclave left out this epoch, and why
        self._keep(opened.sealed)

    @classmethod
    def start(
        cls,
        state_dir: Path | str,
        client_id: int,
        *,
        scheme: SignatureScheme = SignatureScheme.MLDSA65,
        sealed: bytes = b"",
        authority: AuthorityKey | None = None,
        policy: ClientPolicy | None = None,
        provisioner: SimulatedRootCa | None = None,
        tap: ChannelTap | None = None,
        on_seal: Callable[[bytes], None] | None = None,
    ) -> EnclaveKeystore:
        """Start a simulated enclave on the device ``state_dir`` and open the keystore in it."""
        enclave = SimEnclave.start(state_dir, ta.CHRONOS_TA, provisioner=provisioner, tap=tap)
        try:
            return cls(
                enclave,
                client_id,
                scheme=scheme,
                sealed=sealed,
                authority=authority,
                policy=policy,
                on_seal=on_seal,
            )
        except BaseException:
            enclave.close()
            raise

    # ---- plumbing ---------------------------------------------------------------------------

    def _call(self, command: Command[P, R], params: P) -> R:
        try:
            return call(self._enclave, command, params)
        except CounterReuse as exc:
            raise LocalProtocolError(
                str(exc), state="ON_MASKED_INPUT", client=self._id, reason=AbortReason.ROUND_REUSED
            ) from None
        except TrustedAppError as exc:
            _reraise(exc)
            raise

    def _keep(self, sealed: bytes) -> None:
        self.sealed_state = sealed
        if self._on_seal is not None:
            self._on_seal(sealed)

    @property
    def enclave(self) -> Enclave:
        """The enclave this keystore runs in."""
        return self._enclave

    def close(self) -> None:
        """Shut the enclave down (the sealed state and the counter survive)."""
        self._enclave.close()

    # ---- attestation --------------------------------------------------------------------------

    def evidence(self, nonce: bytes) -> bytes:
        """Attestation evidence binding this device's identity key and a verifier's ``nonce``."""
        return self._enclave.evidence(report_data_for(self._identity, nonce))

    def attest(self, verifier: AttestationVerifier) -> AttestationResult:
        """Answer a fresh challenge of ``verifier`` (raises ``AttestationError`` if refused)."""
        nonce = verifier.challenge()
        return verifier.verify(self.evidence(nonce), public_key=self._identity, nonce=nonce)

    def status(self) -> ta.Status:
        """Counter, phase and the enclave memory held by precomputed masks."""
        return self._call(ta.STATUS, ta.Empty())

    # ---- ChronosKeystore ------------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        """The device's client id."""
        return self._id

    @property
    def identity_public_key(self) -> bytes:
        """Public half of the identity key made inside the enclave."""
        return self._identity

    def last_round(self) -> int:
        """The enclave's round counter."""
        return self.status().last_round

    def begin_epoch(
        self, config: m.EpochConfig, directory: Mapping[int, EndorsedKey]
    ) -> m.EpochKeys:
        """O0 inside the enclave (the directory is checked there)."""
        params = ta.BeginEpoch(config=config, directory=dict(directory))
        result = self._call(ta.BEGIN_EPOCH, params)
        self._keep(result.sealed)
        self.rejected = dict(result.rejected)
        return result.message

    def reveal_seed(self, msg: m.SeedCommitments) -> m.EpochSeedReveal:
        """O0 seed reveal inside the enclave."""
        result = self._call(ta.REVEAL_SEED, ta.RevealSeed(commitments=msg))
        self._keep(result.sealed)
        return result.message

    def share_keys(self, directory: m.KeyDirectory) -> m.EpochShares:
        """O1 inside the enclave."""
        result = self._call(ta.SHARE_KEYS, ta.ShareKeys(directory=directory))
        self._keep(result.sealed)
        self.rejected = dict(result.rejected)
        return result.message

    def accept_shares(self, relay: m.ShareRelay) -> m.EpochReady:
        """O2 inside the enclave."""
        result = self._call(ta.ACCEPT_SHARES, ta.AcceptShares(relay=relay))
        self._keep(result.sealed)
        self.rejected = dict(result.rejected)
        return result.message

    def precompute(self, round_id: int) -> None:
        """Combine the round's masks into enclave memory."""
        self._call(ta.PRECOMPUTE, ta.RoundParams(round_id=round_id))

    def mask(self, round_id: int, vector: RingVector) -> RingVector:
        """Mask ``vector`` in place: it goes in, the masked vector comes out."""
        params = ta.MaskParams(round_id=round_id, vector=vector.tobytes())
        result = self._call(ta.MASK, params)
        if len(result.vector) != vector.nbytes:
            raise LocalProtocolError(
                "enclave returned a vector of the wrong size", state="ON_MASKED_INPUT"
            )
        vector[:] = np.frombuffer(result.vector, dtype=vector.dtype)
        return vector

    def release(self, request: m.UnmaskRequest) -> m.UnmaskShares:
        """Release shares under the enclave's ledger."""
        result = self._call(ta.RELEASE, ta.Release(request=request))
        self._keep(result.sealed)
        return result.message
