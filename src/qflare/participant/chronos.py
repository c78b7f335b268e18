"""A device's part in CHRONOS epochs: keystores (software or simulated enclave), the participant.

Epoch life cycle seen from a node (every answer is a :class:`SignedResult`):

* ``join``: open a keystore for the epoch; answer with the identity key it signs epoch keys with
  (the device key for the software keystore, a key made inside the enclave otherwise);
* ``setup``: install the identity directory, make a :class:`ChronosClient`, answer ``start()``;
* later steps: decode the CHRONOS server message; a ``RoundStart`` comes with the global model,
  so train, quantise and hand the vector over first; answer with ``receive()``.

The same task served again gets the same signed answer; a protocol error abandons the epoch
(the server then treats the node as a dropout). Keystore state of an interrupted epoch is not
resumed after a node restart: the node simply joins the next epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec
import numpy as np

from qflare.crypto import RingVector, Rng, SignatureScheme, Signer
from qflare.participant.base import ResultSigner, RunReport, Trainer
from qflare.protocol.chronos import ChronosClient, ChronosKeystore, Mode, SoftwareKeystore
from qflare.protocol.chronos import messages as cm
from qflare.protocol.errors import ProtocolError
from qflare.protocol.identity import AuthorityKey, endorse_key
from qflare.protocol.policy import ClientPolicy
from qflare.protocol.quantize import QuantConfig, quantize, weight_cap
from qflare.protocol.wire import (
    ChronosJoin,
    ChronosJoined,
    ChronosRound,
    ChronosSetup,
    ChronosStep,
    ChronosTask,
    SignedResult,
    Task,
    TaskBody,
)

if TYPE_CHECKING:
    from qflare.tee.certs import SimulatedRootCa
    from qflare.tee.chronos_host import EnclaveKeystore

__all__ = [
    "ChronosParticipant",
    "EnclaveKeystores",
    "EpochAbandonedError",
    "Joining",
    "KeystoreProvider",
    "SoftwareKeystores",
]

log = logging.getLogger("qflare.node")
SEALED_FILE = "chronos-sealed.bin"


class EpochAbandonedError(Exception):
    """This node left its epoch after an error (the server will count it as a dropout)."""


class KeystoreProvider(Protocol):
    """Where a node's CHRONOS secrets live: one keystore, epoch after epoch."""

    def open(self, join: ChronosJoin) -> Joining:
        """Open (or reopen) the keystore for an epoch; its signing key and, if any, evidence."""
        ...

    def keystore(self) -> ChronosKeystore:
        """The opened keystore."""
        ...

    def close(self) -> None:
        """Release the keystore (an enclave is shut down; its sealed state and counter stay)."""
        ...


@dataclass(frozen=True)
class Joining:
    """What a keystore offers an epoch: the key that signs its epoch keys, and evidence."""

    identity_pk: bytes
    enclave: bool = False
    evidence: bytes = b""


class SoftwareKeystores:
    """Keystores in the node process, signing epoch keys with the device identity key.

    Args:
        signer: The device identity key.
        rng: Randomness of the keystore.
        authority: The enrollment authority key peers are checked against.
        policy: The node's policy for epoch parameters.
    """

    def __init__(
        self, signer: Signer, rng: Rng, authority: AuthorityKey, policy: ClientPolicy
    ) -> None:
        self._signer, self._rng, self._authority, self._policy = signer, rng, authority, policy
        self._store: SoftwareKeystore | None = None

    def open(self, join: ChronosJoin) -> Joining:
        """A fresh keystore in process; the device identity key serves as its key."""
        self._store = SoftwareKeystore(
            join.client_index,
            self._signer,
            self._rng,
            authority=self._authority,
            policy=self._policy,
        )
        return Joining(identity_pk=self._signer.public_key)

    def keystore(self) -> ChronosKeystore:
        """The keystore of the current epoch."""
        if self._store is None:
            raise RuntimeError("open() was not called")
        return self._store

    def close(self) -> None:
        """Nothing to release."""
        self._store = None


class EnclaveKeystores:
    """The device's keystore in a simulated enclave whose platform state lives under ``root``.

    The device is provisioned once (first use): the enclave makes its identity key and seals
    the enrollment authority's key and the node's policy; from then on it is reopened from its
    sealed state (``root / chronos-sealed.bin``, rewritten after every change), epoch after
    epoch, and the round counter is the platform's monotonic counter.

    Args:
        root: The device's enclave state directory.
        authority: The authority key to provision (later opens use the sealed one).
        policy: The policy to provision.
        provisioner: The simulated TEE manufacturer that certifies the platform's attestation
            key (without it, the enclave cannot produce evidence).
    """

    def __init__(
        self,
        root: Path,
        authority: AuthorityKey | None = None,
        policy: ClientPolicy | None = None,
        provisioner: SimulatedRootCa | None = None,
    ) -> None:
        self.root, self._authority, self._policy = root, authority, policy
        self._provisioner = provisioner
        self._store: object | None = None

    def open(self, join: ChronosJoin) -> Joining:
        """Start the enclave (provisioning it on first use); evidence over its key if asked."""
        from qflare.tee.attestation import NONCE_BYTES
        from qflare.tee.errors import AttestationError

        store = self._ensure(join)
        evidence = b""
        if len(join.nonce) == NONCE_BYTES:
            try:
                evidence = store.evidence(join.nonce)
            except AttestationError as exc:  # e.g. a platform no manufacturer provisioned
                log.warning("enclave cannot attest", extra={"why": str(exc)})
        return Joining(identity_pk=store.identity_public_key, enclave=True, evidence=evidence)

    def _ensure(self, join: ChronosJoin) -> EnclaveKeystore:
        from qflare.tee.chronos_host import EnclaveKeystore

        store = self._store
        if isinstance(store, EnclaveKeystore) and store.client_id == join.client_index:
            return store
        self.close()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        sealed_file = self.root / SEALED_FILE
        sealed = sealed_file.read_bytes() if sealed_file.exists() else b""
        store = EnclaveKeystore.start(
            self.root,
            join.client_index,
            scheme=SignatureScheme(join.signature_scheme),
            sealed=sealed,
            authority=self._authority,
            policy=self._policy,
            provisioner=self._provisioner,
            on_seal=self._save_sealed,
        )
        self._store = store
        return store

    def _save_sealed(self, sealed: bytes) -> None:
        path = self.root / SEALED_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(sealed)
        os.replace(tmp, path)

    def keystore(self) -> ChronosKeystore:
        """The enclave-backed keystore."""
        from qflare.tee.chronos_host import EnclaveKeystore

        store = self._store
        if not isinstance(store, EnclaveKeystore):
            raise RuntimeError("open() was not called")
        return store

    def close(self) -> None:
        """Shut the enclave down (its sealed state and counter survive)."""
        from qflare.tee.chronos_host import EnclaveKeystore

        store, self._store = self._store, None
        if isinstance(store, EnclaveKeystore):
            store.close()


class ChronosParticipant:
    """Answers CHRONOS tasks for one device.

    Args:
        results: Signs every answer with the device identity key.
        trainer: Local training.
        rng: Randomness of the stochastic rounding.
        keystores: Where the epoch secrets live.
        report: Where rounds completed and dropped are counted.
        clock: Wall-clock time (deadline warnings).
        certificate: The device's certificate (endorses the keystore's key to peers).
    """

    def __init__(
        self,
        results: ResultSigner,
        trainer: Trainer,
        rng: Rng,
        keystores: KeystoreProvider,
        report: RunReport,
        clock: Callable[[], float],
        *,
        certificate: bytes = b"",
    ) -> None:
        self._results, self._trainer, self._rng = results, trainer, rng
        self.keystores, self._report, self._clock = keystores, report, clock
        self._certificate = certificate
        self.epoch: int | None = None
        self.mode = Mode.CHRONOS
        self.client: ChronosClient | None = None
        self._step = -1
        self._answer: SignedResult | None = None
        self._closing: dict[tuple[int, int], int] = {}  # answer key -> round it finishes
        self._counted: set[int] = set()

    def handles(self, body: TaskBody) -> bool:
        """CHRONOS tasks."""
        return isinstance(body, ChronosTask)

    def handle(self, task: Task) -> SignedResult | None:
        """The signed answer to ``task``; ``None`` if this device does not answer it.

        A protocol error leaves the epoch (counted as a drop of the round in progress).
        """
        ct = task.body
        if not isinstance(ct, ChronosTask):
            return None
        try:
            return self._handle(task, ct)
        except EpochAbandonedError as exc:
            self._report.drop(task.round_id, task.step, f"CHRONOS epoch left: {exc}")
            return None

    def _handle(self, task: Task, ct: ChronosTask) -> SignedResult | None:
        answer = self._answer
        same = answer is not None and (answer.round_id, answer.step) == (task.round_id, task.step)
        if ct.epoch == self.epoch and answer is not None and same:
            log.info("re-sending answer", extra={"round": task.round_id, "step": task.step})
            return answer
        if isinstance(ct.part, ChronosJoin):
            return self._join(task, ct, ct.part)
        if ct.epoch != self.epoch or task.step <= self._step:
            log.info("stale or foreign CHRONOS task", extra={"epoch": ct.epoch, "step": task.step})
            return None
        try:
            reply = self._reply(task, ct)
        except (ProtocolError, msgspec.MsgspecError, ValueError, RuntimeError) as exc:
            self.abandon(f"protocol error: {exc}")
            raise EpochAbandonedError(str(exc)) from exc
        if reply is None:
            return None
        finishes = isinstance(reply, cm.UnmaskShares) or (
            isinstance(reply, cm.MaskedInput) and self.mode is Mode.CHRONOS
        )
        result = self._sign(task, cm.encode(reply))
        if finishes:
            self._closing[(task.round_id, task.step)] = task.round_id
        return result

    def _join(self, task: Task, ct: ChronosTask, join: ChronosJoin) -> SignedResult:
        self.abandon(None, close=False)
        self.epoch, self.mode = ct.epoch, join.mode
        joining = self.keystores.open(join)
        entry = endorse_key(
            self._results.signer,
            self._certificate,
            join.session,
            join.client_index,
            joining.identity_pk,
            enclave=joining.enclave,
        )
        joined = ChronosJoined(
            identity_pk=joining.identity_pk,
            enclave=joining.enclave,
            endorsement=entry,
            evidence=joining.evidence,
        )
        log.info("joining epoch", extra={"epoch": ct.epoch, "enclave": joining.enclave})
        return self._sign(task, msgspec.msgpack.encode(joined))

    def _reply(self, task: Task, ct: ChronosTask) -> cm.ClientMessage | None:
        part = ct.part
        if isinstance(part, ChronosSetup):
            keystore = self.keystores.keystore()
            self.client = ChronosClient(part.config, keystore, part.directory)
            reply = self.client.start()
            if keystore.rejected:
                log.warning("peers left out", extra={"epoch": ct.epoch, **_named(keystore)})
            return reply
        client = self.client
        if client is None or not isinstance(part, ChronosStep):
            log.warning("malformed CHRONOS task ignored", extra={"step": task.step})
            return None
        msg = cm.decode_server(part.message)
        if isinstance(msg, cm.RoundStart):
            if part.round is None:
                raise ValueError("a round start without the model")
            client.set_input(self._local_update(msg.round_id, part.round, client))
        return client.receive(msg)

    def _local_update(self, round_id: int, info: ChronosRound, client: ChronosClient) -> RingVector:
        weights = np.frombuffer(info.weights, dtype="<f4").astype(np.float32)
        delta, examples = self._trainer.train(weights, round_id)
        if delta.shape != weights.shape:
            raise ValueError(f"trainer returned {delta.shape}, model has {weights.shape}")
        cfg = QuantConfig(info.clip, client.cfg.modulus_bits, info.max_total_weight)
        if self._clock() > info.deadline:
            log.warning("training overran the step deadline", extra={"round": round_id})
        cap = weight_cap(cfg, len(client.cfg.participants))
        return quantize(delta, min(examples, cap), cfg, self._rng)

    def _sign(self, task: Task, message: bytes) -> SignedResult:
        result = self._results.sign(task.round_id, task.step, message)
        self._step, self._answer = task.step, result
        return result

    def delivered(self, result: SignedResult) -> bool:
        """Note a delivered answer; ``True`` if it finished this device's part of a new round."""
        finished = self._closing.pop((result.round_id, result.step), None)
        if finished is None or finished in self._counted:
            return False
        self._counted.add(finished)
        self._report.completed += 1
        if self.client is not None:
            try:
                self.client.precompute_next()  # idle time: the next round's masks
            except ProtocolError as exc:
                log.warning("precompute failed", extra={"why": str(exc)})
        return True

    def rejected(self, result: SignedResult, why: str) -> None:
        """The server rejected our answer: leave the epoch (counted as a drop)."""
        self.abandon(why)
        self._report.drop(result.round_id, result.step, why)

    def position(self) -> tuple[int, int] | None:
        """The round and step of the latest answer in the epoch in progress, if any."""
        answer = self._answer
        if self.epoch is None or answer is None:
            return None
        return answer.round_id, answer.step

    def abandon(self, why: str | None, *, close: bool = True) -> None:
        """Leave the current epoch (the keystore is closed unless ``close`` is false)."""
        if why is not None and self.epoch is not None:
            log.warning("epoch abandoned", extra={"epoch": self.epoch, "why": why})
        if close:
            self.keystores.close()
        self.epoch, self.client, self._step, self._answer = None, None, -1, None
        self._closing = {}


def _named(keystore: ChronosKeystore) -> dict[str, str]:
    """Rejected peers as log fields (reasons only, no keys)."""
    return {f"peer_{v}": why for v, why in sorted(keystore.rejected.items())}
