"""Test accuracy of global models on the dataset's held-out split (``evaluate = true``).

Only for the round event log: nothing depends on it. Torch and the dataset load on first use.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from qflare.server.model import ModelStore

__all__ = ["TestAccuracy"]

log = logging.getLogger("qflare.server")


class TestAccuracy:
    """Evaluates stored model versions (a failure is logged once and gives ``None``).

    Args:
        models: The global model store (its dataset and architecture).
    """

    __test__ = False  # not a pytest class

    def __init__(self, models: ModelStore) -> None:
        self._models = models
        self._parts: tuple[Any, Any] | None = None
        self._broken = models.model_name is not None and models.model_name.startswith("vector:")

    def __call__(self, version: int) -> float | None:
        """Accuracy of model ``version`` on the test split, or ``None`` if unavailable."""
        if self._broken:
            return None
        try:
            return self._evaluate(version)
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            self._broken = True
            log.warning("model evaluation disabled", extra={"error": str(exc)[:200]})
            return None

    def _evaluate(self, version: int) -> float:
        from torch import nn

        from qflare.fl import evaluate_batches, set_flat

        data, model = self._load()
        set_flat(model, self._models.weights(version).astype(np.float32))
        _, accuracy, _ = evaluate_batches(
            model, nn.CrossEntropyLoss(), [(data.x_test, data.y_test)]
        )
        return float(accuracy)

    def _load(self) -> tuple[Any, Any]:
        if self._parts is None:
            from qflare.fl import build_model, default_model_name, load_dataset

            data = load_dataset(self._models.dataset, 0)
            arch = self._models.model_name or default_model_name(data.input_shape)
            model = build_model(arch, data.input_shape, data.num_classes, seed=0)
            self._parts = (data, model)
        return self._parts
