"""A node's part in CHRONOS epochs: keystores (software or simulated enclave) and the task driver.

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
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np

from qflare.crypto import RingVector, Rng, SignatureScheme, Signer
from qflare.node.trainer import Trainer
from qflare.protocol.chronos import ChronosClient, ChronosKeystore, Mode, SoftwareKeystore
from qflare.protocol.chronos import messages as cm
from qflare.protocol.errors import ProtocolError
from qflare.protocol.quantize import QuantConfig, quantize
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    ChronosJoin,
    ChronosJoined,
    ChronosRound,
    ChronosTask,
    SignedResult,
    Task,
    result_transcript,
)

__all__ = [
    "ChronosParticipant",
    "EnclaveKeystores",
    "EpochAbandonedError",
    "KeystoreProvider",
    "SoftwareKeystores",
]

log = logging.getLogger("qflare.node")
SEALED_FILE = "chronos-sealed.bin"


class EpochAbandonedError(Exception):
    """This node left its epoch after an error (the server will count it as a dropout)."""


class KeystoreProvider(Protocol):
    """Where a node's CHRONOS secrets live: one keystore per epoch."""

    def open(self, join: ChronosJoin) -> ChronosJoined:
        """Open a fresh keystore for an epoch; return the identity key it signs with."""
        ...

    def keystore(self, identities: dict[int, bytes]) -> ChronosKeystore:
        """The opened keystore, with the epoch's identity directory installed."""
        ...

    def close(self) -> None:
        """Release the keystore (an enclave is shut down; its counter survives)."""
        ...


class SoftwareKeystores:
    """Keystores in the node process, signing epoch keys with the device identity key."""

    def __init__(self, signer: Signer, rng: Rng) -> None:
        self._signer, self._rng = signer, rng
        self._client: int | None = None

    def open(self, join: ChronosJoin) -> ChronosJoined:
        """The device identity key serves as the keystore's identity."""
        self._client = join.client_index
        return ChronosJoined(identity_pk=self._signer.public_key)

    def keystore(self, identities: dict[int, bytes]) -> ChronosKeystore:
        """A fresh :class:`SoftwareKeystore` (its round counter is in memory)."""
        if self._client is None:
            raise RuntimeError("open() was not called")
        return SoftwareKeystore(self._client, self._signer, identities, self._rng)

    def close(self) -> None:
        """Nothing to release."""
        self._client = None


class EnclaveKeystores:
    """Keystores in a simulated enclave process whose platform state lives under ``root``.

    Each epoch opens a fresh enclave device (a new identity key made inside), because the
    trusted application accepts one identity directory per device; the round counter is the
    platform's monotonic counter, so it survives epochs and restarts. The latest sealed state
    is written to ``root / chronos-sealed.bin``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._store: object | None = None

    def open(self, join: ChronosJoin) -> ChronosJoined:
        """Start the enclave and open a new device in it."""
        from qflare.tee import chronos_ta as ta  # the enclave stack: only when asked for
        from qflare.tee.chronos_host import EnclaveKeystore
        from qflare.tee.sim import SimEnclave

        self.close()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        enclave = SimEnclave.start(self.root, ta.CHRONOS_TA)
        try:
            store = EnclaveKeystore(
                enclave,
                join.client_index,
                scheme=SignatureScheme(join.signature_scheme),
                on_seal=self._save_sealed,
            )
        except BaseException:
            enclave.close()
            raise
        self._store = store
        return ChronosJoined(identity_pk=store.identity_public_key, enclave=True)

    def _save_sealed(self, sealed: bytes) -> None:
        (self.root / SEALED_FILE).write_bytes(sealed)

    def keystore(self, identities: dict[int, bytes]) -> ChronosKeystore:
        """Install the directory inside the enclave; the enclave-backed keystore."""
        from qflare.tee.chronos_host import EnclaveKeystore

        store = self._store
        if not isinstance(store, EnclaveKeystore):
            raise RuntimeError("open() was not called")
        store.enroll(identities)
        return store

    def close(self) -> None:
        """Shut the enclave down."""
        from qflare.tee.chronos_host import EnclaveKeystore

        store, self._store = self._store, None
        if isinstance(store, EnclaveKeystore):
            store.close()


class ChronosParticipant:
    """Answers CHRONOS tasks for one node.

    Args:
        device_id: The node's device id.
        signer: Device identity key (signs every result).
        trainer: Local training.
        rng: Randomness of the stochastic rounding.
        keystores: Where the epoch secrets live.
        clock: Wall-clock time (deadline warnings).
    """

    def __init__(
        self,
        device_id: str,
        signer: Signer,
        trainer: Trainer,
        rng: Rng,
        keystores: KeystoreProvider,
        clock: Callable[[], float],
    ) -> None:
        self.device_id, self._signer, self._trainer, self._rng = device_id, signer, trainer, rng
        self.keystores, self._clock = keystores, clock
        self.epoch: int | None = None
        self.mode = Mode.CHRONOS
        self.client: ChronosClient | None = None
        self._step = -1
        self._answer: SignedResult | None = None
        self._closing: dict[tuple[int, int], int] = {}  # answer key -> round it finishes
        self._counted: set[int] = set()

    def handle(self, task: Task, ct: ChronosTask) -> SignedResult | None:
        """The signed answer to ``task``; ``None`` if this node does not answer it.

        Raises:
            EpochAbandonedError: a protocol error; the epoch is left (the caller counts a drop).
        """
        answer = self._answer
        same = answer is not None and (answer.round_id, answer.step) == (task.round_id, task.step)
        if ct.epoch == self.epoch and answer is not None and same:
            log.info("re-sending answer", extra={"round": task.round_id, "step": task.step})
            return answer
        if ct.join is not None:
            return self._join(task, ct, ct.join)
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
        self.abandon(None)
        self.epoch, self.mode = ct.epoch, join.mode
        joined = self.keystores.open(join)
        log.info("joining epoch", extra={"epoch": ct.epoch, "enclave": joined.enclave})
        return self._sign(task, msgspec.msgpack.encode(joined))

    def _reply(self, task: Task, ct: ChronosTask) -> cm.ClientMessage | None:
        if ct.setup is not None:
            keystore = self.keystores.keystore(dict(ct.setup.identities))
            self.client = ChronosClient(ct.setup.config, keystore)
            return self.client.start()
        client = self.client
        if client is None or ct.message is None:
            log.warning("malformed CHRONOS task ignored", extra={"step": task.step})
            return None
        msg = cm.decode_server(ct.message)
        if isinstance(msg, cm.RoundStart):
            if ct.round is None:
                raise ValueError("a round start without the model")
            client.set_input(self._local_update(msg.round_id, ct.round, client))
        return client.receive(msg)

    def _local_update(self, round_id: int, info: ChronosRound, client: ChronosClient) -> RingVector:
        weights = np.frombuffer(info.weights, dtype="<f4").astype(np.float32)
        delta, examples = self._trainer.train(weights, round_id)
        if delta.shape != weights.shape:
            raise ValueError(f"trainer returned {delta.shape}, model has {weights.shape}")
        cfg = QuantConfig(info.clip, client.cfg.modulus_bits, info.max_total_weight)
        if self._clock() > info.deadline:
            log.warning("training overran the step deadline", extra={"round": round_id})
        return quantize(delta, examples, cfg, self._rng)

    def _sign(self, task: Task, message: bytes) -> SignedResult:
        transcript = result_transcript(self.device_id, task.round_id, task.step, message)
        result = SignedResult(
            device_id=self.device_id,
            round_id=task.round_id,
            step=task.step,
            message=message,
            signature=self._signer.sign(transcript, context=UPDATE_CONTEXT),
        )
        self._step, self._answer = task.step, result
        return result

    def owns(self, result: SignedResult) -> bool:
        """Whether ``result`` is this participant's latest answer."""
        return self._answer is result

    def delivered(self, result: SignedResult) -> bool:
        """Note a delivered answer; ``True`` if it finished this node's part of a new round."""
        finished = self._closing.pop((result.round_id, result.step), None)
        if finished is None or finished in self._counted:
            return False
        self._counted.add(finished)
        if self.client is not None:
            try:
                self.client.precompute_next()  # idle time: the next round's masks
            except ProtocolError as exc:
                log.warning("precompute failed", extra={"why": str(exc)})
        return True

    def abandon(self, why: str | None) -> None:
        """Leave the current epoch (its keystore is closed)."""
        if why is not None and self.epoch is not None:
            log.warning("epoch abandoned", extra={"epoch": self.epoch, "why": why})
        self.keystores.close()
        self.epoch, self.client, self._step, self._answer = None, None, -1, None
        self._closing = {}
