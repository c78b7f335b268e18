"""What one client needs to train locally: its data loader and its per-round fit config.

Shared by the in-process simulation and the edge node, so that a node holding partition ``i``
of ``N`` trains exactly like simulated client ``i`` with the same seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from qflare.fl.client import Config
from qflare.fl.datasets import Dataset
from qflare.fl.partition import IndexArray

__all__ = ["client_loader", "fit_config"]


def client_loader(
    data: Dataset, indices: IndexArray, batch_size: int
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """A shuffling loader over the training examples ``indices`` of ``data``.

    Args:
        data: The full dataset.
        indices: This client's training-example indices (from a partitioner).
        batch_size: Mini-batch size.

    Returns:
        The client's training loader.
    """
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    subset = TensorDataset(data.x_train[index], data.y_train[index])
    return DataLoader(subset, batch_size=batch_size, shuffle=True)


def fit_config(
    seed: int,
    round_id: int,
    client: int,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    proximal_mu: float = 0.0,
) -> Config:
    """The :meth:`~qflare.fl.TorchClient.fit` config of ``client`` in ``round_id``.

    The shuffle seed is derived from ``(seed, round_id, client)``, so local training is
    reproducible and differs between clients and rounds.

    Args:
        seed: Federation seed.
        round_id: Round number.
        client: Client (partition) index.
        epochs: Local passes over the data.
        lr: SGD learning rate.
        momentum: SGD momentum.
        batch_size: Mini-batch size.
        proximal_mu: FedProx coefficient (0 disables it).

    Returns:
        The config mapping.
    """
    shuffle = int(np.random.SeedSequence([seed, round_id, client]).generate_state(1)[0])
    return {
        "epochs": epochs,
        "lr": lr,
        "momentum": momentum,
        "batch_size": batch_size,
        "proximal_mu": proximal_mu,
        "seed": shuffle,
    }
