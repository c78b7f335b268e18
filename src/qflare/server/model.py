"""The global model: initial weights from the FL layer, a strategy step on each round's sum."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from qflare.fl.strategy import AggregateResult, Strategy
from qflare.store import repos
from qflare.store.models import ModelVersion

_SHAPES = {"mnist": ((1, 28, 28), 10), "digits": ((1, 8, 8), 10)}


class ModelStore:
    """Versions of the global model, kept in the database.

    Args:
        factory: Database session factory.
        dataset: ``mnist`` or ``digits`` (sets the input shape).
        model: Architecture name (default for the dataset if ``None``), or ``vector:D`` for a
            plain D-dimensional vector federation (no model; nodes send any NumPy update).
        seed: Seed of the initial weights.
    """

    def __init__(
        self, factory: sessionmaker[Session], dataset: str, model: str | None, seed: int = 0
    ) -> None:
        self._factory = factory
        self.dataset = dataset
        if dataset not in _SHAPES:
            raise ValueError(f"unknown dataset {dataset!r}")
        self.input_shape, self.num_classes = _SHAPES[dataset]
        self.model_name = model
        self._seed = seed
        self._vector_dim = (
            int(model.split(":", 1)[1]) if model and model.startswith("vector:") else None
        )

    def ensure_initial(self, now: float) -> None:
        """Store version 0 (freshly initialised weights) if no model exists yet."""
        with self._factory() as db, db.begin():
            if repos.latest_model(db) is None:
                repos.put_model(db, 0, self._initial().tobytes(), now, None)

    def _initial(self) -> npt.NDArray[np.float32]:
        if self._vector_dim is not None:  # a raw-vector federation (NumPy in, NumPy out)
            return np.zeros(self._vector_dim, dtype=np.float32)
        from qflare.fl import build_model, default_model_name, get_flat  # torch: only when needed

        name = self.model_name or default_model_name(self.input_shape)
        net = build_model(name, self.input_shape, self.num_classes, seed=self._seed)
        return get_flat(net).astype(np.float32)

    def latest(self) -> tuple[int, npt.NDArray[np.float32]]:
        """(version, weights) of the newest model."""
        with self._factory() as db:
            row = repos.latest_model(db)
            if row is None:
                raise LookupError("no model stored")
            return row.version, np.frombuffer(row.weights, dtype=np.float32).copy()

    def weights(self, version: int) -> npt.NDArray[np.float32]:
        """Weights of ``version``."""
        with self._factory() as db:
            row = db.get(ModelVersion, version)
            if row is None:
                raise LookupError(f"model version {version} not stored")
            return np.frombuffer(row.weights, dtype=np.float32).copy()

    def apply(
        self, db: Session, strategy: Strategy, result: AggregateResult, round_id: int, now: float
    ) -> int:
        """New version = ``strategy.apply(latest, result)`` (inside the caller's transaction).

        An empty aggregate (no weight) leaves the model where it is.
        """
        row = repos.latest_model(db)
        assert row is not None
        if result.empty:
            return row.version
        current = np.frombuffer(row.weights, dtype=np.float32)
        new = np.asarray(strategy.apply(current, result), dtype=np.float32)
        repos.put_model(db, row.version + 1, new.tobytes(), now, round_id)
        return row.version + 1
