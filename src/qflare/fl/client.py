"""Client API in the shape Flower users know: ``get_weights`` / ``fit`` / ``evaluate``.

Clients know nothing about cryptography: they receive global weights, train locally and
return new weights. The simulation turns those into flat deltas for the aggregator.

Config keys read by :class:`TorchClient` (all optional):

* ``epochs`` (int, default 1): local passes over the training data.
* ``lr`` (float, default 0.01): SGD learning rate.
* ``momentum`` (float, default 0.0): SGD momentum.
* ``batch_size`` (int): rebuilds the training loader with this batch size.
* ``seed`` (int): seeds the shuffle of the rebuilt loader, making local training reproducible.
* ``proximal_mu`` (float, default 0.0): FedProx term ``mu / 2 * ||w - w_global||^2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = [
    "Config",
    "EvalResult",
    "FitResult",
    "LossFn",
    "Metrics",
    "NDArrays",
    "NumPyClient",
    "Scalar",
    "TorchClient",
    "evaluate_batches",
]

Scalar = bool | int | float | str
Config = Mapping[str, Scalar]
Metrics = dict[str, Scalar]
NDArrays = list[npt.NDArray[np.float32]]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor] | list[torch.Tensor]]


@dataclass(frozen=True)
class FitResult:
    """Outcome of local training.

    Attributes:
        weights: New local weights, one array per parameter.
        num_examples: Training examples used (the client's aggregation weight).
        metrics: Extra values, e.g. ``train_loss``.
    """

    weights: NDArrays
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """Outcome of local evaluation.

    Attributes:
        loss: Mean loss over the evaluated examples.
        num_examples: Examples evaluated.
        metrics: Extra values, e.g. ``accuracy``.
    """

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@runtime_checkable
class NumPyClient(Protocol):
    """A federated client that speaks lists of NumPy arrays."""

    def get_weights(self) -> NDArrays:
        """Return the current local weights."""
        ...

    def fit(self, weights: NDArrays, config: Config) -> FitResult:
        """Train from ``weights`` and return the new weights."""
        ...

    def evaluate(self, weights: NDArrays, config: Config) -> EvalResult:
        """Evaluate ``weights`` on local data."""
        ...


def _number(config: Config, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"config[{key!r}] must be a number, got {value!r}")
    return float(value)


def _count(config: Config, key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"config[{key!r}] must be a non-negative int, got {value!r}")
    return value


def _size(loader: DataLoader[tuple[torch.Tensor, ...]]) -> int:
    data = loader.dataset
    if not isinstance(data, Sized):
        raise TypeError("the training DataLoader's dataset must define __len__")
    return len(data)


def evaluate_batches(
    model: nn.Module, loss_fn: LossFn, batches: Batches
) -> tuple[float, float, int]:
    """Mean loss and accuracy of a classifier over batches of ``(inputs, labels)``.

    Args:
        model: Classifier returning logits.
        loss_fn: Mean-reduced loss, e.g. ``nn.CrossEntropyLoss()``.
        batches: Iterable of ``(inputs, labels)``.

    Returns:
        ``(mean_loss, accuracy, num_examples)``; ``(0.0, 0.0, 0)`` when there are no examples.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for batch in batches:
            inputs, labels = batch[0], batch[1]
            logits = model(inputs)
            loss_sum += float(loss_fn(logits, labels)) * len(labels)
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
    model.train(was_training)
    if seen == 0:
        return 0.0, 0.0, 0
    return loss_sum / seen, correct / seen, seen


class TorchClient:
    """A :class:`NumPyClient` around a plain ``torch.nn.Module``.

    Several clients may share one module in a sequential simulation: ``fit`` and ``evaluate``
    always load the weights they are given first.

    Args:
        model: The network; its ``parameters()`` order defines the weight list.
        loss_fn: Mean-reduced training loss.
        train_loader: Local training data.
        eval_loader: Local evaluation data (defaults to the training data).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_loader: DataLoader[tuple[torch.Tensor, ...]],
        eval_loader: DataLoader[tuple[torch.Tensor, ...]] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.eval_loader = eval_loader

    def get_weights(self) -> NDArrays:
        """Return copies of the parameters as float32 arrays."""
        return [p.detach().cpu().to(torch.float32).numpy().copy() for p in self.model.parameters()]

    def set_weights(self, weights: NDArrays) -> None:
        """Overwrite the parameters with ``weights`` (same order and shapes)."""
        with torch.no_grad():
            for param, array in zip(self.model.parameters(), weights, strict=True):
                if tuple(param.shape) != array.shape:
                    raise ValueError(f"weight shape {array.shape} != parameter {param.shape}")
                param.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(param.dtype))

    def fit(self, weights: NDArrays, config: Config) -> FitResult:
        """Train locally from ``weights`` with SGD (and FedProx if ``proximal_mu > 0``).

        Args:
            weights: Global weights to start from.
            config: Training settings (see the module docstring).

        Returns:
            New weights, the number of training examples and the mean training loss.
        """
        self.set_weights(weights)
        loader = self._loader(config)
        mean_loss = self._train(
            loader,
            epochs=_count(config, "epochs", 1),
            lr=_number(config, "lr", 0.01),
            momentum=_number(config, "momentum", 0.0),
            mu=_number(config, "proximal_mu", 0.0),
        )
        return FitResult(self.get_weights(), _size(loader), {"train_loss": mean_loss})

    def evaluate(self, weights: NDArrays, config: Config) -> EvalResult:
        """Evaluate ``weights`` on the local evaluation (or training) data.

        Args:
            weights: Weights to evaluate.
            config: Unused; present for API symmetry.

        Returns:
            Mean loss, number of examples and accuracy.
        """
        self.set_weights(weights)
        loader = self.eval_loader if self.eval_loader is not None else self.train_loader
        loss, accuracy, seen = evaluate_batches(self.model, self.loss_fn, loader)
        return EvalResult(loss, seen, {"accuracy": accuracy})

    def _loader(self, config: Config) -> DataLoader[tuple[torch.Tensor, ...]]:
        if "batch_size" not in config and "seed" not in config:
            return self.train_loader
        batch_size = _count(config, "batch_size", self.train_loader.batch_size or 32)
        generator = torch.Generator().manual_seed(_count(config, "seed", 0))
        return DataLoader(
            self.train_loader.dataset,
            batch_size=max(batch_size, 1),
            shuffle=True,
            generator=generator,
        )

    def _train(
        self,
        loader: DataLoader[tuple[torch.Tensor, ...]],
        *,
        epochs: int,
        lr: float,
        momentum: float,
        mu: float,
    ) -> float:
        params = list(self.model.parameters())
        anchor = [p.detach().clone() for p in params] if mu > 0 else []
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
        self.model.train()
        loss_sum, seen = 0.0, 0
        for _ in range(epochs):
            for batch in loader:
                inputs, labels = batch[0], batch[1]
                optimizer.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.model(inputs), labels)
                objective = loss + _proximal(params, anchor, mu) if anchor else loss
                torch.autograd.backward(objective)
                optimizer.step()
                loss_sum += float(loss.detach()) * len(labels)
                seen += len(labels)
        return loss_sum / seen if seen else 0.0


def _proximal(params: list[nn.Parameter], anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx term ``mu / 2 * ||w - w_global||^2`` (Li et al. 2020)."""
    squared = torch.stack([(p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True)])
    return 0.5 * mu * squared.sum()
