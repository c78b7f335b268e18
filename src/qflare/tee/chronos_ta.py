"""The CHRONOS trusted application: a client's keystore running inside the enclave.

The TA wraps the one implementation of the keystore's secret logic
(:class:`~qflare.protocol.chronos.core.KeystoreCore`) with the enclave's services:

* the **identity key** is made inside from the enclave CSPRNG when the device is provisioned;
  only its public half leaves. Provisioning also seals the **enrollment authority's key** and
  the client's **policy**: every later identity directory is checked against that key inside,
  and a provisioned device never opens again without its sealed state (a monotonic counter
  ``provisioned`` records it), so a compromised OS cannot start it afresh with an authority of
  its own;
* the **round counter** is the enclave's named monotonic counter ``round`` (trusted storage),
  advanced before a masked vector is returned, so a round's masks are used once -- also after
  a restart, and whatever sealed blob the host hands back;
* the **epoch state** (identity seed, identity directory, epoch keys, pairwise keys, held shares,
  release ledger) is sealed to the TA after every change and kept by the host; only the latest
  blob unseals, so rolling it back is detected;
* **precomputed masks** live in enclave memory only (never sealed, lost on restart).

What crosses the command channel: public keys and signatures, share ciphertexts, released
shares, sealed blobs, and the update vector in / masked vector out. Never a private key, a
pairwise key or seed, or a self-mask secret. The host half is
:class:`qflare.tee.chronos_host.EnclaveKeystore`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
import numpy as np

from qflare.crypto import (
    Ed25519Signer,
    HybridSigner,
    Label,
    MlDsa65Signer,
    SecretBytes,
    SignatureScheme,
    Signer,
    hkdf,
    ring_dtype,
)
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.core import KeystoreCore
from qflare.protocol.chronos.core_state import PolicyState
from qflare.protocol.errors import LocalProtocolError, ProtocolError
from qflare.protocol.identity import EndorsedKey, IdentityError, decode_authority_key
from qflare.tee.errors import TrustedAppError
from qflare.tee.ta import Command, CommandTable, TaContext, TaManifest

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)

ROUND_COUNTER = "round"
PROVISIONED_COUNTER = "provisioned"
STATE_LABEL = "state"
REFUSAL_PREFIX = "chronos-refusal:"
_SEED_BYTES = 32


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """A protocol refusal carried across the channel inside a ``TrustedAppError`` message."""

    local: bool
    reason: str
    state: str
    client: int | None
    message: str


class OpenParams(msgspec.Struct, frozen=True, kw_only=True):
    """Provision a device (``sealed`` empty) or resume one from its latest sealed state.

    ``authority`` (an encoded authority key) and ``policy`` are used only when provisioning; a
    resumed device keeps the ones sealed with it.
    """

    client_id: int
    scheme: SignatureScheme
    sealed: bytes = b""
    authority: bytes = b""
    policy: PolicyState = msgspec.field(default_factory=PolicyState)
    version: int = 1


class Opened(msgspec.Struct, frozen=True, kw_only=True):
    """The device's public identity key, round counter, epoch config, and sealed state."""

    identity_public_key: bytes
    last_round: int
    config: m.EpochConfig | None
    sealed: bytes
    version: int = 1


class Sealed(msgspec.Struct, frozen=True, kw_only=True):
    """The new sealed state after a change."""

    sealed: bytes
    version: int = 1


class BeginEpoch(msgspec.Struct, frozen=True, kw_only=True):
    """O0 parameters: the epoch and its identity directory (checked inside)."""

    config: m.EpochConfig
    directory: dict[int, EndorsedKey]
    version: int = 1


class RevealSeed(msgspec.Struct, frozen=True, kw_only=True):
    """O0 (sparse graphs): the server's seed commitments."""

    commitments: m.SeedCommitments
    version: int = 1


class RevealResult(msgspec.Struct, frozen=True, kw_only=True):
    """Our seed reveal and the new sealed state."""

    message: m.EpochSeedReveal
    sealed: bytes
    version: int = 1


class KeysResult(msgspec.Struct, frozen=True, kw_only=True):
    """O0 result: the signed advertisement and the new sealed state."""

    message: m.EpochKeys
    sealed: bytes
    rejected: dict[int, str] = {}
    version: int = 1


class ShareKeys(msgspec.Struct, frozen=True, kw_only=True):
    """O1 parameters."""

    directory: m.KeyDirectory
    version: int = 1


class SharesResult(msgspec.Struct, frozen=True, kw_only=True):
    """O1 result: enclave-to-enclave ciphertexts and the new sealed state."""

    message: m.EpochShares
    sealed: bytes
    rejected: dict[int, str] = {}
    version: int = 1


class AcceptShares(msgspec.Struct, frozen=True, kw_only=True):
    """O2 parameters."""

    relay: m.ShareRelay
    version: int = 1


class ReadyResult(msgspec.Struct, frozen=True, kw_only=True):
    """O2 result: the partners and the new sealed state."""

    message: m.EpochReady
    sealed: bytes
    rejected: dict[int, str] = {}
    version: int = 1


class RoundParams(msgspec.Struct, frozen=True, kw_only=True):
    """A round id (for precomputation)."""

    round_id: int
    version: int = 1


class MaskParams(msgspec.Struct, frozen=True, kw_only=True):
    """The update to mask for ``round_id`` (raw little-endian ring elements)."""

    round_id: int
    vector: bytes
    version: int = 1


class MaskResult(msgspec.Struct, frozen=True, kw_only=True):
    """The masked update."""

    vector: bytes
    version: int = 1


class Release(msgspec.Struct, frozen=True, kw_only=True):
    """Online unmask parameters."""

    request: m.UnmaskRequest
    version: int = 1


class ReleaseResult(msgspec.Struct, frozen=True, kw_only=True):
    """The released shares and the new sealed state (the ledger changed)."""

    message: m.UnmaskShares
    sealed: bytes
    version: int = 1


class Empty(msgspec.Struct, frozen=True, kw_only=True):
    """No parameters."""

    version: int = 1


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """Counter, phase and the enclave memory held by precomputed masks."""

    last_round: int
    phase: str
    precomputed_bytes: int
    version: int = 1


class _TaState(msgspec.Struct, frozen=True, kw_only=True):
    """Plaintext of the sealed state (exists only inside the enclave)."""

    client_id: int
    scheme: SignatureScheme
    identity_seed: bytes
    core: bytes

    def __repr__(self) -> str:
        return f"_TaState(client_id={self.client_id}, <redacted>)"


OPEN = Command(1, "open", OpenParams, Opened)
REVEAL_SEED = Command(2, "reveal-seed", RevealSeed, RevealResult)
BEGIN_EPOCH = Command(3, "begin-epoch", BeginEpoch, KeysResult)
SHARE_KEYS = Command(4, "share-keys", ShareKeys, SharesResult)
ACCEPT_SHARES = Command(5, "accept-shares", AcceptShares, ReadyResult)
PRECOMPUTE = Command(6, "precompute", RoundParams, Empty)
MASK = Command(7, "mask", MaskParams, MaskResult)
RELEASE = Command(8, "release", Release, ReleaseResult)
STATUS = Command(9, "status", Empty, Status)
CHRONOS_TA = TaManifest(
    name="qflare.chronos",
    version=1,
    module="qflare.tee.chronos_ta",
    commands=(
        OPEN,
        REVEAL_SEED,
        BEGIN_EPOCH,
        SHARE_KEYS,
        ACCEPT_SHARES,
        PRECOMPUTE,
        MASK,
        RELEASE,
        STATUS,
    ),
    measured_modules=("qflare.protocol",),
)


def signer_from_seed(scheme: SignatureScheme, seed: SecretBytes) -> Signer:
    """The device identity key of ``scheme`` derived from a 32-byte seed."""

    def sub(algorithm: str) -> SecretBytes:
        return hkdf(seed, Label(f"chronos/identity/{algorithm}"))

    if scheme is SignatureScheme.MLDSA65:
        return MlDsa65Signer(sub("mldsa65"))
    if scheme is SignatureScheme.ED25519:
        return Ed25519Signer(sub("ed25519"))
    return HybridSigner(MlDsa65Signer(sub("mldsa65")), Ed25519Signer(sub("ed25519")))


class _TaCounter:
    """The keystore's round counter: the enclave's monotonic counter (trusted storage)."""

    def __init__(self, ctx: TaContext) -> None:
        self._ctx = ctx

    def read(self) -> int:
        return self._ctx.counter_read(ROUND_COUNTER)

    def advance(self, to_value: int) -> int:
        return self._ctx.counter_advance(ROUND_COUNTER, to_value)


def refusal_error(exc: ProtocolError, *, local: bool) -> TrustedAppError:
    """Wrap a protocol refusal so its kind, reason, state and client cross the channel."""
    text = str(exc).split("] ", 1)[-1]
    refusal = Refusal(
        local=local, reason=exc.reason.value, state=exc.state, client=exc.client, message=text
    )
    return TrustedAppError(REFUSAL_PREFIX + msgspec.json.encode(refusal).decode())


def _guard(fn: Callable[[P], R]) -> Callable[[P], R]:
    """Run a handler, turning protocol refusals into channel-safe ``TrustedAppError`` s."""

    def run(params: P) -> R:
        try:
            return fn(params)
        except LocalProtocolError as exc:
            raise refusal_error(exc, local=True) from None
        except ProtocolError as exc:
            raise refusal_error(exc, local=False) from None

    return run


class ChronosTa:
    """The TA's state inside the enclave: one device's keystore.

    Args:
        ctx: Enclave services.
    """

    def __init__(self, ctx: TaContext) -> None:
        self._ctx = ctx
        self._core: KeystoreCore | None = None
        self._seed = SecretBytes(b"")
        self._scheme = SignatureScheme.MLDSA65

    def _need(self) -> KeystoreCore:
        if self._core is None:
            raise TrustedAppError("no device is open")
        return self._core

    def _seal(self) -> bytes:
        core = self._need()
        state = _TaState(
            client_id=core.client_id,
            scheme=self._scheme,
            identity_seed=self._seed.reveal(),
            core=core.export_state().reveal(),
        )
        return self._ctx.seal(msgspec.msgpack.encode(state), label=STATE_LABEL)

    def open(self, params: OpenParams) -> Opened:
        """Provision the device (identity, authority, policy), or resume its sealed state.

        Raises:
            TrustedAppError: a provisioned device opened without its sealed state, a malformed
                authority key, or a sealed state of another client or scheme.
        """
        restored: _TaState | None = None
        if params.sealed:
            plain = self._ctx.unseal(params.sealed, label=STATE_LABEL)
            restored = msgspec.msgpack.decode(plain.reveal(), type=_TaState)
            if (restored.client_id, restored.scheme) != (params.client_id, params.scheme):
                raise TrustedAppError("sealed state belongs to another client or scheme")
            self._seed = SecretBytes(restored.identity_seed)
        else:
            self._provision_once()
            self._seed = SecretBytes(self._ctx.rng.random_bytes(_SEED_BYTES))
        self._scheme = params.scheme
        signer = signer_from_seed(params.scheme, self._seed)
        counter = _TaCounter(self._ctx)
        if restored is not None:
            core = KeystoreCore(params.client_id, signer, self._ctx.rng, counter)
            core.restore_state(SecretBytes(restored.core))
        else:
            try:
                authority = decode_authority_key(params.authority)
            except IdentityError as exc:
                raise TrustedAppError(f"provisioning needs an authority key: {exc}") from None
            core = KeystoreCore(
                params.client_id,
                signer,
                self._ctx.rng,
                counter,
                authority=authority,
                policy=params.policy.policy(),
            )
        self._core = core
        return Opened(
            identity_public_key=core.identity_public_key,
            last_round=core.last_round(),
            config=core.config,
            sealed=params.sealed if restored is not None else self._seal(),
        )

    def _provision_once(self) -> None:
        """A device is provisioned once; afterwards it opens only with its sealed state.

        Otherwise a compromised OS could start it afresh with an authority key of its own and
        then install a directory of keys it made.
        """
        if self._ctx.counter_read(PROVISIONED_COUNTER) > 0:
            raise TrustedAppError("this device is provisioned: open it with its sealed state")
        self._ctx.counter_advance(PROVISIONED_COUNTER, 1)

    def begin_epoch(self, params: BeginEpoch) -> KeysResult:
        """O0: check the directory against the sealed authority key; fresh keys, signed inside.

        The directory decides whose signed keys the TA trusts: each entry must chain to the
        authority sealed at provisioning, so the host cannot pose as a neighbour.
        """
        core = self._need()
        message = core.begin_epoch(params.config, params.directory)
        return KeysResult(message=message, sealed=self._seal(), rejected=dict(core.rejected))

    def reveal_seed(self, params: RevealSeed) -> RevealResult:
        """O0 (sparse graphs): our seed contribution, drawn and revealed inside."""
        message = self._need().reveal_seed(params.commitments)
        return RevealResult(message=message, sealed=self._seal())

    def share_keys(self, params: ShareKeys) -> SharesResult:
        """O1: verify, agree and share, inside."""
        core = self._need()
        message = core.share_keys(params.directory)
        return SharesResult(message=message, sealed=self._seal(), rejected=dict(core.rejected))

    def accept_shares(self, params: AcceptShares) -> ReadyResult:
        """O2: open neighbours' shares inside."""
        core = self._need()
        message = core.accept_shares(params.relay)
        return ReadyResult(message=message, sealed=self._seal(), rejected=dict(core.rejected))

    def precompute(self, params: RoundParams) -> Empty:
        """Idle: combine the round's masks into enclave memory."""
        self._need().precompute(params.round_id)
        return Empty()

    def mask(self, params: MaskParams) -> MaskResult:
        """Online: advance the trusted counter, then mask the update."""
        core = self._need()
        cfg = core.config
        dtype = ring_dtype(cfg.modulus_bits if cfg is not None else 32)
        vector = np.frombuffer(params.vector, dtype=dtype).copy()
        return MaskResult(vector=core.mask(params.round_id, vector).tobytes())

    def release(self, params: Release) -> ReleaseResult:
        """Online: release shares under the ledger, then seal the ledger."""
        message = self._need().release(params.request)
        return ReleaseResult(message=message, sealed=self._seal())

    def held_keys(self) -> tuple[bytes, ...]:
        """The identity public key, once a device is open (the key evidence may bind)."""
        return () if self._core is None else (self._core.identity_public_key,)

    def status(self, params: Empty) -> Status:
        """Counter, phase and precomputed-mask memory."""
        core = self._need()
        return Status(
            last_round=core.last_round(),
            phase=core.phase.value,
            precomputed_bytes=core.precomputed_bytes,
        )


def build(ctx: TaContext) -> CommandTable:
    """Register the CHRONOS TA's handlers (runs inside the enclave process)."""
    ta = ChronosTa(ctx)
    table = CommandTable(CHRONOS_TA)
    table.register(OPEN, _guard(ta.open))
    table.register(REVEAL_SEED, _guard(ta.reveal_seed))
    table.register(BEGIN_EPOCH, _guard(ta.begin_epoch))
    table.register(SHARE_KEYS, _guard(ta.share_keys))
    table.register(ACCEPT_SHARES, _guard(ta.accept_shares))
    table.register(PRECOMPUTE, _guard(ta.precompute))
    table.register(MASK, _guard(ta.mask))
    table.register(RELEASE, _guard(ta.release))
    table.register(STATUS, _guard(ta.status))
    table.vouch_for(ta.held_keys)
    return table
