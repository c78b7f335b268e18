"""The aggregator trusted application: robust aggregation inside an attested server enclave.

Nodes encrypt their updates to a hybrid KEM key (ML-KEM-768 + X25519) made inside this TA
(:mod:`qflare.protocol.enclave`); the TA opens them, keeps them in enclave memory, runs the
round's defence from :mod:`qflare.fl.robust` and releases one aggregate. The host (the
aggregation server's OS and its operator) is assumed hostile: it chooses what to submit, may
crash and restart the enclave, and keeps the sealed key blob.

**What the operator learns.** Per upload, only whether it was accepted or excluded and the
named reason (:class:`~qflare.protocol.enclave.ExclusionReason`); the host already sees an
upload's plaintext header (session, round, device id), so this reveals nothing about the update
beyond "it was malformed/NaN/Inf/mis-sized/mis-weighted". Per round, one
:class:`Aggregate`: the aggregated delta, its total weight, and four counts (submitted,
excluded as invalid, rejected by the defence, accepted). Never which device the defence
rejected, never an individual update. This is the choice of this module: per-device defence
verdicts would tell the operator whose update looked unusual, which is itself a fact about
that update; the counts are what a round report needs.

**Invariants enforced here** (the host cannot bypass them; they are in trusted storage):

* at most ONE aggregate per round id: the monotonic counter ``released`` is advanced to the
  round id *before* the aggregate leaves, and a round id is begun at most once (the counter
  ``round`` moves to it at BEGIN_ROUND, so round ids strictly increase across restarts). A
  host that restarts the enclave from its sealed blob cannot re-run a round on a subset and
  subtract the two aggregates;
* no aggregate of fewer than ``min_accepted`` valid updates; ``min_accepted`` is at least the
  floor in the measured configuration (:class:`AggregatorConfig`), so the host cannot set it
  to 1 and aggregate one device;
* a device's identity key counts only if the enrollment authority pinned in the measured
  configuration certified it (checked inside at BEGIN_ROUND), so the host cannot fill a round
  with devices of its own whose updates it knows;
* one upload per device per round (a second one is a ``replay``), uploads of other rounds are
  ``wrong-round``; an excluded upload never disturbs what was already accepted;
* only the latest sealed key blob opens (the seal counter refuses an older one), and the key
  is sealed again at every BEGIN_ROUND, so restoring an older copy of the counter file (to
  re-run a released round) is detected at the next OPEN.

Restart semantics: an open round lives in enclave memory only. If the enclave dies (or the
host abandons a round by restarting it), that round id is spent: its uploads can never be
aggregated, and the host begins a higher round id for which nodes upload again.

Caveats, stated honestly: Krum releases one (unnamed) device's update verbatim, and the median
releases coordinate-wise order statistics; a deployment that wants only averages restricts
``AggregatorConfig.defences``. The rejected-by-defence count leaks how many updates the
defence disliked. The TEE is *simulated* (:mod:`qflare.tee.sim`): process isolation only,
and its trusted storage is a file: a host that rewinds *both* that file and the sealed blob to
a consistent earlier copy is not detected (a hardware RPMB cannot be rewound); nor are two
enclave processes started at once on one state directory, since each caches the counters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.crypto import HybridKem, MlKem768, SecretBytes, X25519KeyPair
from qflare.fl.robust import DEFENCES, Defence, make_defence
from qflare.protocol.enclave import (
    DeviceKey,
    ExclusionReason,
    RoundContext,
    UploadRefused,
    decode_upload,
    open_update,
)
from qflare.protocol.identity import IdentityError, decode_authority_key, verify_certificate
from qflare.tee.errors import EnclaveError, TrustedAppError
from qflare.tee.measurement import reference_measurement
from qflare.tee.ta import Command, CommandTable, TaContext, TaManifest

__all__ = [
    "AGGREGATOR_TA",
    "BEGIN_ROUND",
    "FINISH",
    "INIT",
    "OPEN",
    "REFUSAL_PREFIX",
    "SUBMIT",
    "Aggregate",
    "AggregatorConfig",
    "BeginRound",
    "ExclusionReason",
    "Finish",
    "InitParams",
    "KeyResult",
    "OpenParams",
    "RoundOpened",
    "RoundRefusal",
    "Submit",
    "SubmitResult",
    "aggregator_measurement",
    "build",
    "encode_config",
]

ROUND_COUNTER: Final = "round"
RELEASED_COUNTER: Final = "released"
KEY_LABEL: Final = "kem-key"
REFUSAL_PREFIX: Final = "aggregator-refusal:"
_KEM_SEED_BYTES: Final = 64
_DH_BYTES: Final = 32


class RoundRefusal(enum.StrEnum):
    """Why the TA refused a command (the host misused it or tried to cheat)."""

    NO_KEY = "no-key"
    ROUND_OPEN = "round-open"
    NO_ROUND = "no-round"
    ROUND_NOT_NEW = "round-not-new"
    ALREADY_RELEASED = "already-released"
    TOO_FEW_ACCEPTED = "too-few-accepted"
    BAD_PARAMS = "bad-params"
    BAD_CERTIFICATE = "bad-certificate"


class AggregatorConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The TA's configuration; part of its measurement, so a node's pin covers it.

    Attributes:
        authority: The encoded enrollment authority key whose certificates admit devices.
        min_accepted: Floor for every round's ``min_accepted``.
        defences: Defences the host may choose (default: every one of ``qflare.fl.robust``).
        version: Format version.
    """

    authority: bytes
    min_accepted: int = 2
    defences: tuple[str, ...] = DEFENCES
    version: int = 1


class InitParams(msgspec.Struct, frozen=True, kw_only=True):
    """Make a fresh KEM key pair inside (earlier sealed keys stop opening)."""

    version: int = 1


class OpenParams(msgspec.Struct, frozen=True, kw_only=True):
    """Restore the key from the latest sealed blob."""

    sealed: bytes
    version: int = 1


class KeyResult(msgspec.Struct, frozen=True, kw_only=True):
    """The enclave's public KEM key, its sealed blob and the two round counters."""

    public_key: bytes
    sealed: bytes
    last_round: int
    last_released: int
    version: int = 1


class BeginRound(msgspec.Struct, frozen=True, kw_only=True):
    """Open round ``round_id``.

    Attributes:
        session: Federation session (bound into every upload).
        round_id: Must exceed every round id begun before on this platform.
        dim: Update length.
        defence: One of the configured defences.
        params: The defence's parameters (see ``qflare.fl.robust.make_defence``).
        certificates: Authority-issued certificates of the round's devices.
        min_accepted: Valid updates needed to finish (at least the configured floor).
        max_weight: Largest weight an upload may claim.
        reference: Optional reference direction (``dim`` float32, little-endian) for the
            defences that use one; empty for none.
    """

    session: str
    round_id: int
    dim: int
    defence: str
    params: dict[str, float] = {}
    certificates: tuple[bytes, ...]
    min_accepted: int
    max_weight: float = 1e9
    reference: bytes = b""
    version: int = 1


class RoundOpened(msgspec.Struct, frozen=True, kw_only=True):
    """The round is open for ``devices`` certified devices; ``sealed`` replaces the key blob.

    The key is sealed again after the round counter moves, so the latest blob is always newer
    than a copy of the counter file taken before this round: restoring such a copy (to re-run
    the round) makes the next OPEN fail with ``RollbackDetected``.
    """

    round_id: int
    devices: int
    sealed: bytes
    version: int = 1


class Submit(msgspec.Struct, frozen=True, kw_only=True):
    """One encoded :class:`~qflare.protocol.enclave.SealedUpload`."""

    upload: bytes
    version: int = 1


class SubmitResult(msgspec.Struct, frozen=True, kw_only=True):
    """Accepted, or excluded with a reason; the round continues either way."""

    accepted: bool
    reason: ExclusionReason | None = None
    version: int = 1


class Finish(msgspec.Struct, frozen=True, kw_only=True):
    """Aggregate round ``round_id`` (once)."""

    round_id: int
    version: int = 1


class Aggregate(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that leaves the enclave about a round: the delta and counts.

    Attributes:
        round_id: The round.
        defence: The defence that ran.
        delta: The aggregated (weighted-mean) delta, float64 little-endian.
        weight: Total weight of the updates the defence accepted.
        submitted: Uploads submitted this round.
        excluded: Uploads excluded as invalid (every reason).
        rejected: Valid updates the defence refused.
        accepted: Updates in the aggregate.
    """

    round_id: int
    defence: str
    delta: bytes
    weight: float
    submitted: int
    excluded: int
    rejected: int
    accepted: int
    version: int = 1


INIT = Command(1, "init", InitParams, KeyResult)
OPEN = Command(2, "open", OpenParams, KeyResult)
BEGIN_ROUND = Command(3, "begin-round", BeginRound, RoundOpened)
SUBMIT = Command(4, "submit", Submit, SubmitResult)
FINISH = Command(5, "finish", Finish, Aggregate)
AGGREGATOR_TA = TaManifest(
    name="qflare.aggregator",
    version=1,
    module="qflare.tee.aggregator_ta",
    commands=(INIT, OPEN, BEGIN_ROUND, SUBMIT, FINISH),
    # everything the TA imports outside the runtime: the protocol package (upload format,
    # certificates) and the fl package (robust rules; fl's __init__ loads partition eagerly)
    measured_modules=("qflare.protocol", "qflare.fl"),
)


def encode_config(config: AggregatorConfig) -> bytes:
    """The configuration bytes the enclave is started with (and measured over)."""
    return msgspec.msgpack.encode(config)


def aggregator_measurement(config: AggregatorConfig) -> bytes:
    """The measurement a correct aggregator enclave with ``config`` reports (a node pins it)."""
    return reference_measurement(AGGREGATOR_TA, encode_config(config))


def refuse(reason: RoundRefusal, message: str) -> TrustedAppError:
    """A refusal that crosses the channel with its reason (the host re-raises it)."""
    return TrustedAppError(f"{REFUSAL_PREFIX}{reason.value}:{message}")


class _SealedKey(msgspec.Struct, frozen=True, kw_only=True):
    """Plaintext of the sealed key blob (exists only inside the enclave)."""

    kem_seed: bytes
    dh_private: bytes
    public_key: bytes

    def __repr__(self) -> str:
        return "_SealedKey(<redacted>)"


@dataclass
class _Round:
    """One open round's state in enclave memory (never sealed: lost, with the round, on a crash)."""

    ctx: RoundContext
    defence: Defence
    devices: dict[str, DeviceKey]
    min_accepted: int
    reference: npt.NDArray[np.float64] | None
    matrix: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float64]
    accepted: dict[str, int] = field(default_factory=dict)
    submitted: int = 0
    excluded: int = 0


def _decode_config(raw: bytes) -> AggregatorConfig:
    try:
        config = msgspec.msgpack.decode(raw, type=AggregatorConfig)
        decode_authority_key(config.authority)
    except (msgspec.MsgspecError, ValueError) as exc:
        raise EnclaveError(f"the aggregator needs an AggregatorConfig: {exc}") from None
    if config.min_accepted < 1 or not set(config.defences) <= set(DEFENCES):
        raise EnclaveError("configured min_accepted must be >= 1 and defences known")
    return config


class AggregatorTa:
    """The TA's state inside the enclave: the KEM key and at most one open round.

    Args:
        ctx: Enclave services; ``ctx.config`` must hold an encoded :class:`AggregatorConfig`.
    """

    def __init__(self, ctx: TaContext) -> None:
        self._ctx = ctx
        self._config = _decode_config(ctx.config)
        self._authority = decode_authority_key(self._config.authority)
        self._kem: HybridKem | None = None
        self._kem_state: _SealedKey | None = None
        self._round: _Round | None = None

    # ---- key ------------------------------------------------------------------------------

    def _no_open_round(self) -> None:
        if self._round is not None:
            raise refuse(RoundRefusal.ROUND_OPEN, "finish the open round first")

    def _key_result(self, kem: HybridKem, sealed: bytes) -> KeyResult:
        return KeyResult(
            public_key=kem.public_key,
            sealed=sealed,
            last_round=self._ctx.counter_read(ROUND_COUNTER),
            last_released=self._ctx.counter_read(RELEASED_COUNTER),
        )

    def init(self, params: InitParams) -> KeyResult:
        """Make a KEM key pair from the enclave CSPRNG and seal it (earlier blobs stop opening)."""
        self._no_open_round()
        kem_seed = SecretBytes(self._ctx.rng.random_bytes(_KEM_SEED_BYTES))
        dh = SecretBytes(self._ctx.rng.random_bytes(_DH_BYTES))
        kem = HybridKem(MlKem768(kem_seed), X25519KeyPair(dh))
        state = _SealedKey(
            kem_seed=kem_seed.reveal(), dh_private=dh.reveal(), public_key=kem.public_key
        )
        self._kem, self._kem_state = kem, state
        return self._key_result(kem, self._seal_key())

    def _seal_key(self) -> bytes:
        """Seal the key again (the seal counter moves; every earlier blob stops opening)."""
        if self._kem_state is None:
            raise refuse(RoundRefusal.NO_KEY, "INIT or OPEN first")
        return self._ctx.seal(msgspec.msgpack.encode(self._kem_state), label=KEY_LABEL)

    def open(self, params: OpenParams) -> KeyResult:
        """Restore the key from ``params.sealed``; an older blob raises ``RollbackDetected``."""
        self._no_open_round()
        plain = self._ctx.unseal(params.sealed, label=KEY_LABEL)
        state = msgspec.msgpack.decode(plain.reveal(), type=_SealedKey)
        kem = HybridKem(
            MlKem768(SecretBytes(state.kem_seed)), X25519KeyPair(SecretBytes(state.dh_private))
        )
        if kem.public_key != state.public_key:
            raise TrustedAppError("sealed key does not match its public key")
        self._kem, self._kem_state = kem, state
        return self._key_result(kem, params.sealed)

    def held_keys(self) -> tuple[bytes, ...]:
        """The KEM public key, once made or restored (the only key evidence may bind)."""
        return () if self._kem is None else (self._kem.public_key,)

    def _need_key(self) -> HybridKem:
        if self._kem is None:
            raise refuse(RoundRefusal.NO_KEY, "INIT or OPEN first")
        return self._kem

    # ---- round ----------------------------------------------------------------------------

    def begin_round(self, params: BeginRound) -> RoundOpened:
        """Check everything, advance the ``round`` counter to ``round_id``, then open the round."""
        self._need_key()
        self._no_open_round()
        last = self._ctx.counter_read(ROUND_COUNTER)
        if params.round_id <= last:
            raise refuse(RoundRefusal.ROUND_NOT_NEW, f"round {params.round_id} <= {last}")
        defence = self._defence(params)
        devices = self._certified(params.certificates)
        minimum = self._min_accepted(params, len(devices))
        reference = self._reference(params)
        self._ctx.counter_advance(ROUND_COUNTER, params.round_id)
        n = len(devices)
        self._round = _Round(
            ctx=RoundContext(params.session, params.round_id, params.dim, params.max_weight),
            defence=defence,
            devices=devices,
            min_accepted=minimum,
            reference=reference,
            matrix=np.empty((n, params.dim), dtype=np.float32),
            weights=np.zeros(n, dtype=np.float64),
        )
        return RoundOpened(round_id=params.round_id, devices=n, sealed=self._seal_key())

    def _defence(self, params: BeginRound) -> Defence:
        if params.dim < 1 or not 0 < params.max_weight < float("inf"):
            raise refuse(RoundRefusal.BAD_PARAMS, "dim must be >= 1 and max_weight positive")
        if params.defence not in self._config.defences:
            raise refuse(RoundRefusal.BAD_PARAMS, f"defence {params.defence!r} is not allowed")
        try:
            return make_defence(params.defence, **params.params)
        except ValueError as exc:
            raise refuse(RoundRefusal.BAD_PARAMS, str(exc)) from None

    def _certified(self, certificates: tuple[bytes, ...]) -> dict[str, DeviceKey]:
        devices: dict[str, DeviceKey] = {}
        for cert in certificates:
            try:
                body = verify_certificate(cert, self._authority)
            except IdentityError as exc:
                raise refuse(RoundRefusal.BAD_CERTIFICATE, str(exc)) from None
            if body.device_id in devices:
                raise refuse(RoundRefusal.BAD_CERTIFICATE, "a device is listed twice")
            devices[body.device_id] = DeviceKey(body.scheme, body.identity_pk)
        return devices

    def _min_accepted(self, params: BeginRound, devices: int) -> int:
        floor = self._config.min_accepted
        if params.min_accepted < floor:
            raise refuse(RoundRefusal.BAD_PARAMS, f"min_accepted must be >= {floor}")
        if devices < params.min_accepted:
            raise refuse(RoundRefusal.BAD_PARAMS, "fewer devices than min_accepted")
        return params.min_accepted

    @staticmethod
    def _reference(params: BeginRound) -> npt.NDArray[np.float64] | None:
        if not params.reference:
            return None
        if len(params.reference) != 4 * params.dim:
            raise refuse(RoundRefusal.BAD_PARAMS, "reference must hold dim float32 values")
        ref = np.frombuffer(params.reference, dtype="<f4").astype(np.float64)
        if not np.isfinite(ref).all():
            raise refuse(RoundRefusal.BAD_PARAMS, "reference must be finite")
        return ref

    def _need_round(self) -> _Round:
        if self._round is None:
            raise refuse(RoundRefusal.NO_ROUND, "no round is open")
        return self._round

    def submit(self, params: Submit) -> SubmitResult:
        """Open one upload; keep it if valid, otherwise exclude it with its reason."""
        state = self._need_round()
        kem = self._need_key()
        state.submitted += 1
        try:
            upload = decode_upload(params.upload)
            if upload.device_id in state.accepted:
                raise UploadRefused(ExclusionReason.REPLAY, "device already uploaded")
            opened = open_update(upload, ctx=state.ctx, kem=kem, devices=state.devices)
        except UploadRefused as exc:
            state.excluded += 1
            return SubmitResult(accepted=False, reason=exc.reason)
        row = len(state.accepted)
        state.matrix[row] = opened.vector
        state.weights[row] = opened.weight
        state.accepted[opened.device_id] = row
        return SubmitResult(accepted=True)

    def finish(self, params: Finish) -> Aggregate:
        """Run the defence; advance ``released`` to the round id; only then return the result."""
        state = self._check_finish(params.round_id)
        k = len(state.accepted)
        try:
            result = state.defence.aggregate(state.matrix[:k], state.weights[:k], state.reference)
        except ValueError as exc:
            raise refuse(RoundRefusal.BAD_PARAMS, f"defence failed: {exc}") from None
        accepted = int(result.accepted.sum())
        self._ctx.counter_advance(RELEASED_COUNTER, params.round_id)
        self._round = None
        return Aggregate(
            round_id=params.round_id,
            defence=state.defence.name,
            delta=result.mean.astype("<f8").tobytes(),
            weight=float(state.weights[:k][result.accepted].sum()),
            submitted=state.submitted,
            excluded=state.excluded,
            rejected=k - accepted,
            accepted=accepted,
        )

    def _check_finish(self, round_id: int) -> _Round:
        released = self._ctx.counter_read(RELEASED_COUNTER)
        if round_id <= released:
            raise refuse(RoundRefusal.ALREADY_RELEASED, f"round {round_id} was released")
        state = self._need_round()
        if state.ctx.round_id != round_id:
            raise refuse(RoundRefusal.NO_ROUND, f"round {round_id} is not the open round")
        if len(state.accepted) < state.min_accepted:
            raise refuse(
                RoundRefusal.TOO_FEW_ACCEPTED,
                f"{len(state.accepted)} valid updates < min_accepted {state.min_accepted}",
            )
        return state


def build(ctx: TaContext) -> CommandTable:
    """Register the aggregator TA's handlers (runs inside the enclave process)."""
    ta = AggregatorTa(ctx)
    table = CommandTable(AGGREGATOR_TA)
    table.register(INIT, ta.init)
    table.register(OPEN, ta.open)
    table.register(BEGIN_ROUND, ta.begin_round)
    table.register(SUBMIT, ta.submit)
    table.register(FINISH, ta.finish)
    table.vouch_for(ta.held_keys)
    return table
