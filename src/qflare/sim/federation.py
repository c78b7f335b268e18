"""A simulated federation's fixed parts: its configuration, data split, model and clients.

Shared by the in-process run (:mod:`qflare.sim.federated`) and the worker processes of
:mod:`qflare.sim.parallel`, which rebuild the same seeded federation from the configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qflare.fl import (
    Config,
    Dataset,
    TorchClient,
    build_model,
    build_strategy,
    default_model_name,
    parse_partition,
    partition,
)
from qflare.fl.local import client_loader, fit_config

__all__ = [
    "ClientDataTransform",
    "FederatedConfig",
    "Federation",
    "build_federation",
    "client_fit_config",
]

ClientDataTransform = Callable[
    [int, npt.NDArray[np.float32], npt.NDArray[np.int64]],
    tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
]
"""``(client, images, labels) -> (images, labels)``: rewrites one client's training data."""


@dataclass(frozen=True)
class FederatedConfig:
    """Everything that defines a simulated federation.

    Attributes:
        dataset: ``"digits"`` (8x8, fast) or ``"mnist"`` (28x28).
        num_clients: Population size.
        rounds: Federated rounds.
        partition: ``"iid"``, ``"dirichlet:<alpha>"`` or ``"shards:<k>"``.
        strategy: ``"fedavg"``, ``"fedadagrad"``, ``"fedadam"`` or ``"fedyogi"``.
        strategy_params: Server parameters (``eta``, ``beta1``, ``beta2``, ``tau``).
        model: Architecture name; ``None`` picks the default for the dataset.
        local_epochs: Local passes per round.
        batch_size: Local mini-batch size.
        lr: Local SGD learning rate.
        momentum: Local SGD momentum.
        fraction_fit: Fraction of clients sampled per round.
        min_fit_clients: Lower bound on clients sampled per round.
        fedprox_mu: FedProx proximal coefficient (0 disables it).
        seed: Seeds the split, the model, sampling and local shuffles.
        min_partition_size: Smallest client for Dirichlet splits.
        threads: Torch intra-op threads during the run (1 is as fast for these small
            models and robust when other processes share the cores).
        processes: Worker processes for local training (1 trains in this process).
        data_transform: Optional ``(client, images, labels) -> (images, labels)`` applied once
            to each client's training data before the run (e.g. data poisoning of malicious
            clients); must be picklable when ``processes > 1``. ``None`` trains on the data as is.
    """

    dataset: str = "digits"
    num_clients: int = 10
    rounds: int = 5
    partition: str = "iid"
    strategy: str = "fedavg"
    strategy_params: Mapping[str, float] = field(default_factory=dict)
    model: str | None = None
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    fraction_fit: float = 1.0
    min_fit_clients: int = 1
    fedprox_mu: float = 0.0
    seed: int = 0
    min_partition_size: int = 10
    threads: int = 1
    processes: int = 1
    data_transform: ClientDataTransform | None = None

    def __post_init__(self) -> None:
        positive = {
            "num_clients": self.num_clients,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "min_fit_clients": self.min_fit_clients,
            "processes": self.processes,
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.rounds < 0 or self.lr <= 0 or self.fedprox_mu < 0 or self.seed < 0:
            raise ValueError("rounds, seed and fedprox_mu must be >= 0 and lr > 0")
        if not 0.0 < self.fraction_fit <= 1.0:
            raise ValueError(f"fraction_fit must lie in (0, 1], got {self.fraction_fit}")
        parse_partition(self.partition)
        build_strategy(self.strategy, self.strategy_params)


@dataclass(frozen=True)
class Federation:
    """The fixed parts of a run: data, the shared model and the clients."""

    data: Dataset
    model: nn.Module
    clients: tuple[TorchClient, ...]
    shapes: list[tuple[int, ...]]
    sizes: tuple[int, ...]


def build_federation(config: FederatedConfig, data: Dataset) -> Federation:
    """Split the data, build the seeded model and one client per part."""
    name = config.model or default_model_name(data.input_shape)
    model = build_model(name, data.input_shape, data.num_classes, seed=config.seed)
    parts = partition(
        data.y_train.numpy(),
        config.num_clients,
        config.partition,
        config.seed,
        min_samples=config.min_partition_size,
    )
    loss_fn = nn.CrossEntropyLoss()
    clients = [
        TorchClient(model, loss_fn, _client_loader(config, data, cid, idx))
        for cid, idx in enumerate(parts)
    ]
    shapes = [tuple(p.shape) for p in model.parameters()]
    return Federation(data, model, tuple(clients), shapes, tuple(len(p) for p in parts))


def _client_loader(
    config: FederatedConfig, data: Dataset, cid: int, idx: npt.NDArray[np.int64]
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Client ``cid``'s loader, its data rewritten by ``config.data_transform`` if one is set."""
    transform = config.data_transform
    if transform is None:
        return client_loader(data, idx, config.batch_size)
    index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
    x, y = transform(cid, data.x_train[index].numpy(), data.y_train[index].numpy())
    subset = TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )
    return DataLoader(subset, batch_size=config.batch_size, shuffle=True)


def client_fit_config(config: FederatedConfig, round_id: int, client: int) -> Config:
    """Client ``client``'s training configuration in round ``round_id`` (seeded per fit)."""
    return fit_config(
        config.seed,
        round_id,
        client,
        epochs=config.local_epochs,
        lr=config.lr,
        momentum=config.momentum,
        batch_size=config.batch_size,
        proximal_mu=config.fedprox_mu,
    )
