"""Secure aggregation behind the FL :class:`~qflare.fl.Aggregator` seam.

Every round, each sampled client's float delta is quantised with its integer weight into the
ring, a real SecAgg / SecAgg+ round runs over an in-memory :class:`~qflare.sim.cohort.Cohort`
(signatures, encrypted shares, masks, consistency round, unmasking), and only the dequantised sum
over the survivors reaches the strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from qflare.crypto import DeterministicRng, Rng, SignatureScheme, Signer, SystemRng, make_signer
from qflare.fl import AggregateResult, FlatVector, Update
from qflare.fl.attack_experiment import Observer
from qflare.protocol.graph import complete_threshold, find_params
from qflare.protocol.messages import ClientMessage, MaskedInput, RoundConfig
from qflare.protocol.names import ProtocolName
from qflare.protocol.policy import ClientPolicy
from qflare.protocol.quantize import QuantConfig, dequantize, quantize, weight_cap
from qflare.protocol.secagg import ROUNDS, State
from qflare.sim.cohort import Cohort
from qflare.sim.identities import SimAuthority

SECURE_PROTOCOLS: tuple[ProtocolName, ...] = (ProtocolName.SECAGG_PLUS, ProtocolName.SECAGG)
"""The protocols a :class:`SecAggAggregator` runs (CHRONOS has its own in-memory cohort)."""


@dataclass
class SecAggAggregator:
    """Aggregates FL updates with a real SecAgg / SecAgg+ round per FL round.

    Attributes:
        protocol: Complete graph or SecAgg+.
        clip: Quantisation clipping range for each delta coordinate.
        max_total_weight: Public bound on the summed example counts (sets the headroom).
        dropout: Fraction of sampled clients that drop, each at a random protocol round.
        modulus_bits: 32 or 64.
        scheme: Identity signature scheme.
        seed: ``None`` uses the OS CSPRNG; an int makes runs reproducible.
        session: Session name bound into every key and signature.
    """

    protocol: ProtocolName = ProtocolName.SECAGG_PLUS
    clip: float = 1.0
    max_total_weight: int = 100_000
    dropout: float = 0.0
    modulus_bits: int = 32
    scheme: SignatureScheme = SignatureScheme.MLDSA65
    seed: int | None = 0
    session: str = "sim"
    last_dropouts: dict[int, State] = field(default_factory=dict)
    _signers: dict[int, Signer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scheme = SignatureScheme(self.scheme)
        self.protocol = ProtocolName(self.protocol)
        if self.protocol not in SECURE_PROTOCOLS:
            raise ValueError(f"{self.protocol} is not a SecAgg protocol")
        self.quant = QuantConfig(self.clip, self.modulus_bits, self.max_total_weight)
        self._rng: Rng = SystemRng() if self.seed is None else DeterministicRng(self.seed)
        self._authority = SimAuthority(self._rng)
        self._certs: dict[int, bytes] = {}

    def _signer(self, client: int) -> Signer:
        """Identity keys are made once per client (enrollment), then reused every round."""
        if client not in self._signers:
            self._signers[client] = make_signer(self.scheme, self._rng)
        return self._signers[client]

    def _certificate(self, client: int) -> bytes:
        """Each client's certificate is issued once (enrollment), then reused every round."""
        if client not in self._certs:
            self._certs[client] = self._authority.certify(client, self._signer(client))
        return self._certs[client]

    def round_parameters(self, n: int) -> tuple[int, int]:
        """``(k, t)`` of a round with ``n`` sampled clients.

        Raises:
            ValueError: SecAgg+ has no ``(k, t)`` for ``n`` clients at this dropout rate.
        """
        if not self.protocol.sparse_graph:
            return n, complete_threshold(n, ClientPolicy().corrupt_fraction)
        p = find_params(n, dropout_fraction=max(self.dropout, 0.01))
        return p.k, p.t

    def _config(self, round_id: int, ids: tuple[int, ...], dim: int) -> RoundConfig:
        k, t = self.round_parameters(len(ids))
        return RoundConfig(
            session=self.session,
            round_id=round_id,
            participants=ids,
            k=k,
            t=t,
            dim=dim,
            modulus_bits=self.modulus_bits,
            signature_scheme=self.scheme.value,
        )

    def _dropouts(self, round_id: int, ids: tuple[int, ...]) -> dict[int, State]:
        gen = np.random.default_rng([self.seed or 0, round_id])
        n_drop = round(self.dropout * len(ids))
        chosen = [int(i) for i in gen.choice(len(ids), size=n_drop, replace=False)]
        return {ids[i]: ROUNDS[int(gen.integers(1, len(ROUNDS)))] for i in chosen}

    def aggregate(self, round_id: int, updates: Mapping[int, Update]) -> AggregateResult:
        """Run one secure-aggregation round over ``updates``.

        Raises:
            RuntimeError: the round aborted (too many dropouts for the threshold).
        """
        ids = tuple(sorted(updates))
        dim = int(next(iter(updates.values()))[0].shape[0])
        cfg = self._config(round_id, ids, self.quant.ring_dim(dim))
        self.last_dropouts = self._dropouts(round_id, ids)
        cohort = Cohort(
            cfg,
            seed=None if self.seed is None else self.seed + round_id,
            dropouts=self.last_dropouts,
            signers={u: self._signer(u) for u in ids},
            authority=self._authority,
            certificates={u: self._certificate(u) for u in ids},
        )
        cap = weight_cap(self.quant, len(ids))
        res = cohort.run(
            lambda u: quantize(updates[u][0], min(updates[u][1], cap), self.quant, self._rng)
        )
        if res.total is None:
            raise RuntimeError(f"secure aggregation round {round_id} aborted: {res.server_errors}")
        total, weight = dequantize(res.total, self.quant)
        return AggregateResult(total, float(weight), len(res.survivors))


def attack_observers(
    cohort_size: int = 5, clip: float = 1.0, seed: int = 0
) -> tuple[Observer, Observer]:
    """Observers for the gradient-inversion harness: (quantised update, masked upload).

    The masked observer runs a real SecAgg round in which the victim is client 0 among
    ``cohort_size`` clients (the others send random updates) and captures the victim's R2
    message exactly as the server receives it; it returns the attacker's best reading of it:
    the ring words dequantised as if they were unmasked.
    """
    quant = QuantConfig(clip, 32, 1)
    drbg = DeterministicRng(seed)

    def quantised(gradient: FlatVector, rng: np.random.Generator) -> npt.NDArray[np.float64]:
        q = quantize(gradient, 1, quant, drbg)
        return dequantize(q, quant, strict=False)[0]

    def masked(gradient: FlatVector, rng: np.random.Generator) -> npt.NDArray[np.float64]:
        captured: dict[int, bytes] = {}

        def tap(msg: ClientMessage) -> ClientMessage:
            if isinstance(msg, MaskedInput) and msg.sender == 0:
                captured[0] = msg.vector
            return msg

        ids = tuple(range(cohort_size))
        cfg = RoundConfig(
            session="attack",
            round_id=int(rng.integers(1, 2**31)),
            participants=ids,
            k=cohort_size,
            t=complete_threshold(cohort_size, ClientPolicy().corrupt_fraction),
            dim=gradient.size + 1,
            signature_scheme="ed25519",
        )
        others = {u: rng.normal(0, float(np.std(gradient)) or 1.0, gradient.size) for u in ids[1:]}
        Cohort(cfg, seed=int(rng.integers(2**31)), client_hook=tap).run(
            lambda u: quantize(gradient if u == 0 else others[u], 1, quant, drbg)
        )
        words = np.frombuffer(captured[0], dtype=np.uint32)
        return dequantize(words.copy(), quant, strict=False)[0]

    return quantised, masked
