"""A simulated edge device for in-process drivers (tests, benchmarks): protocol logic only.

It answers the server's tasks exactly as ``qflare node`` does — train (here: a given update
function), quantise, run its :class:`SecAggClient`, sign the result — without any transport.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from qflare.crypto import RingVector, Rng, SignatureScheme, Signer
from qflare.protocol import messages as m
from qflare.protocol.identity import AuthorityKey, CertificateCache, IdentityDirectory
from qflare.protocol.quantize import QuantConfig, quantize
from qflare.protocol.secagg import RoundRegistry, SecAggClient
from qflare.protocol.wire import (
    UPDATE_CONTEXT,
    SecAggStart,
    SecAggStep,
    SignedResult,
    Task,
    result_transcript,
)

UpdateFn = Callable[[npt.NDArray[np.float32], int], tuple[npt.NDArray[np.float32], int]]
"""(global weights, round id) -> (delta, weight)."""


class SimDevice:
    """One device's protocol side.

    Args:
        device_id: Id from enrollment.
        signer: Identity key.
        update: Local training stand-in.
        rng: Randomness for keys, masks and rounding.
        authority: The enrollment authority key the device pinned.
        cache: Verified certificates (shared by the simulated devices of a process).
    """

    def __init__(
        self,
        device_id: str,
        signer: Signer,
        update: UpdateFn,
        rng: Rng,
        authority: AuthorityKey,
        cache: CertificateCache | None = None,
    ) -> None:
        self.device_id, self.signer, self._update, self._rng = device_id, signer, update, rng
        self._authority, self._cache = authority, cache or CertificateCache()
        self.registry = RoundRegistry()
        self.client: SecAggClient | None = None
        self._input: RingVector | None = None

    def _start(self, task: Task) -> m.ClientMessage:
        s = task.body
        assert isinstance(s, SecAggStart)
        weights = np.frombuffer(s.weights, dtype=np.float32)
        delta, weight = self._update(weights, task.round_id)
        self._input = quantize(
            delta, weight, QuantConfig(s.clip, 32, s.max_total_weight), self._rng
        )
        directory = IdentityDirectory(
            self._authority,
            s.certificates,
            scheme=SignatureScheme(s.config.signature_scheme),
            cache=self._cache,
        )
        self.client = SecAggClient(
            s.config, s.client_index, self.signer, directory, self._rng, self.registry
        )
        return self.client.start()

    def handle(self, task: Task) -> SignedResult:
        """Answer one task with a signed result.

        Raises:
            ProtocolError: the client machine rejected the server's message.
        """
        body = task.body
        if isinstance(body, SecAggStart):
            msg = self._start(task)
        else:
            assert self.client is not None and isinstance(body, SecAggStep)
            server_msg = m.decode_server(body.message)
            if isinstance(server_msg, m.ShareRelay) and self._input is not None:
                self.client.set_input(self._input)
                self._input = None
            msg = self.client.receive(server_msg)
        data = m.encode(msg)
        transcript = result_transcript(self.device_id, task.round_id, task.step, data)
        sig = self.signer.sign(transcript, context=UPDATE_CONTEXT)
        return SignedResult(
            device_id=self.device_id,
            round_id=task.round_id,
            step=task.step,
            message=data,
            signature=sig,
        )
