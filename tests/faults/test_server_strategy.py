"""The server's model update goes through the configured strategy, exactly as the FL layer's."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest

from qflare.fl.strategy import AggregateResult, FedAdam
from qflare.protocol.quantize import dequantize
from qflare.server.settings import ServerSettings

from .harness import Federation

PARAMS = {"eta": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 0.01}


def test_fedadam_server_rounds_move_the_model_exactly_as_fedadam_apply(tmp_path):
    settings = {"strategy": "fedadam", "strategy_params": PARAMS, "max_rounds": 2}
    fed = Federation(tmp_path, settings=settings)
    model = fed.coord._models.weights(0)
    fed.run(until=2)
    assert sorted(fed.check()) == sorted(r.id for r in fed.closed())  # both completed, exact
    reference = FedAdam(**PARAMS)
    for version, row in enumerate(sorted(fed.closed(), key=lambda r: r.id), start=1):
        ring = np.frombuffer(row.result, dtype=np.uint32).copy()
        total, weight = dequantize(ring, fed.coord.quant)
        aggregate = AggregateResult(total, float(weight), len(json.loads(row.survivors)))
        model = reference.apply(model, aggregate)  # the moments carry over to the next round
        assert np.array_equal(fed.coord._models.weights(version), model)


def test_unknown_strategy_parameters_are_refused_at_start_up():
    with pytest.raises(pydantic.ValidationError, match="fedavg takes"):
        ServerSettings(strategy="fedavg", strategy_params={"beta1": 0.9})
    with pytest.raises(pydantic.ValidationError):
        ServerSettings(strategy="fedsgd")
