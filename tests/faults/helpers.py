"""Every fault test ends the same way: each stored round is checked against its exact sum.

A completed round's row names its survivors (client indices); with deterministic test trainers
(``ConstantTrainer``) the expected weighted sum is known. The total weight must be *exactly* the
survivors' weights (integers in the ring), and every coordinate within quantisation error of the
sum of ``weight · delta``. A round that is not COMPLETED must carry no result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import numpy as np

from qflare.node import ConstantTrainer
from qflare.protocol.quantize import QuantConfig, dequantize
from qflare.store.db import make_engine, session_factory
from qflare.store.models import Device, Round

__all__ = ["assert_rounds_exact"]


def assert_rounds_exact(
    database_url: str,
    trainer_of: Callable[[str], ConstantTrainer],
    quant: QuantConfig,
    dim: int,
) -> list[int]:
    """Check every stored round; return the ids of the completed ones.

    Args:
        database_url: The server's database.
        trainer_of: Device id -> the trainer that device ran.
        quant: The federation's quantisation (``clip``, 32 bits, ``max_total_weight``).
        dim: The model's parameter count.
    """
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as db:
            rows = list(db.query(Round).order_by(Round.id).all())
            by_index = {d.client_index: d.id for d in db.query(Device).all()}
    finally:
        engine.dispose()
    completed = []
    for row in rows:
        if row.state != "COMPLETED":
            assert row.result is None, f"round {row.id} is {row.state} but stored a sum"
            continue
        assert row.result is not None and row.survivors, f"round {row.id} lacks its sum"
        survivors = [by_index[i] for i in json.loads(row.survivors)]
        _check(
            row.id, np.frombuffer(row.result, dtype=np.uint32), survivors, trainer_of, quant, dim
        )
        completed.append(row.id)
    return completed


def _check(
    round_id: int,
    ring: np.ndarray,
    devices: list[str],
    trainer_of: Callable[[str], ConstantTrainer],
    quant: QuantConfig,
    dim: int,
) -> None:
    total, weight = dequantize(ring.copy(), quant)
    trainers: Mapping[str, ConstantTrainer] = {d: trainer_of(d) for d in devices}
    assert weight == sum(t.weight for t in trainers.values()), f"round {round_id}: weight"
    expected = sum(t.weight * t.delta(dim, round_id).astype(np.float64) for t in trainers.values())
    err = float(np.max(np.abs(total - expected)))
    assert err <= weight / quant.scale + 1e-9, f"round {round_id}: off by {err}"
