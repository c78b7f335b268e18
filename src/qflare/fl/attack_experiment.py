"""Benchmark of gradient inversion against what different adversaries observe.

:func:`dlg_experiment` attacks several real test images one at a time. For each image it
computes the true single-example gradient on the sigmoid LeNet, passes it through an
*observer* (what the adversary actually gets to see) and runs DLG/iDLG on the result.
Observers shipped here: the plain gradient, a random Gaussian vector and uniformly random
32-bit ring words (the distribution of a one-time-masked secure-aggregation upload).
Callers can plug in their own, e.g. quantise-then-mask with the real protocol.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from qflare.fl.attack import (
    AttackConfig,
    AttackMetrics,
    AttackResult,
    Method,
    as_float_observation,
    dlg_model,
    invert_gradient,
    observed_gradient,
    reconstruction_metrics,
)
from qflare.fl.datasets import Dataset, load_dataset
from qflare.fl.models import FlatVector, LeNet
from qflare.fl.runtime import torch_threads

__all__ = [
    "DlgExperiment",
    "DlgTrial",
    "Observer",
    "dlg_experiment",
    "observe_plain",
    "observe_random_gaussian",
    "observe_uniform_ring",
]

Observer = Callable[[FlatVector, np.random.Generator], npt.NDArray[np.generic]]


def observe_plain(gradient: FlatVector, rng: np.random.Generator) -> FlatVector:
    """The honest-but-curious server without secure aggregation: sees the gradient itself."""
    return gradient.copy()


def observe_random_gaussian(gradient: FlatVector, rng: np.random.Generator) -> FlatVector:
    """A Gaussian vector with the gradient's standard deviation (carries no information)."""
    scale = float(np.std(gradient)) or 1.0
    return (rng.standard_normal(size=gradient.shape) * scale).astype(np.float32)


def observe_uniform_ring(gradient: FlatVector, rng: np.random.Generator) -> npt.NDArray[np.uint32]:
    """Uniform words of ``Z_2^32``: how a one-time-masked upload looks to the server."""
    return rng.integers(0, 2**32, size=gradient.shape, dtype=np.uint32)


@dataclass(frozen=True)
class DlgTrial:
    """One attacked image.

    Attributes:
        index: Position of the image in the test split.
        true_label: Its label.
        truth: The private image ``(C, H, W)``.
        result: What the attacker recovered.
        metrics: Reconstruction quality.
    """

    index: int
    true_label: int
    truth: npt.NDArray[np.float32]
    result: AttackResult
    metrics: AttackMetrics


@dataclass(frozen=True)
class DlgExperiment:
    """Results of :func:`dlg_experiment`.

    Attributes:
        dataset: Dataset name.
        observation: Name of the observer used.
        config: Attack settings (the seed is the first trial's; trial ``i`` adds ``i``).
        trials: One entry per attacked image.
        seconds: Wall-clock time of all attacks.
    """

    dataset: str
    observation: str
    config: AttackConfig
    trials: tuple[DlgTrial, ...]
    seconds: float

    @property
    def mean_psnr_db(self) -> float:
        """Mean PSNR over trials (dB)."""
        return statistics.fmean(t.metrics.psnr_db for t in self.trials)

    @property
    def median_psnr_db(self) -> float:
        """Median PSNR over trials (dB)."""
        return statistics.median(t.metrics.psnr_db for t in self.trials)

    @property
    def label_accuracy(self) -> float:
        """Fraction of trials whose label was recovered."""
        return statistics.fmean(float(t.metrics.label_correct) for t in self.trials)

    def summary(self) -> dict[str, float | int | str]:
        """Flat JSON-ready summary (no images)."""
        return {
            "dataset": self.dataset,
            "observation": self.observation,
            "method": self.config.method,
            "iterations": self.config.iterations,
            "images": len(self.trials),
            "mean_psnr_db": self.mean_psnr_db,
            "median_psnr_db": self.median_psnr_db,
            "mean_mse": statistics.fmean(t.metrics.mse for t in self.trials),
            "label_accuracy": self.label_accuracy,
            "seconds": self.seconds,
        }


def dlg_experiment(
    *,
    dataset: str | Dataset = "mnist",
    num_images: int = 4,
    method: Method = "idlg",
    iterations: int = 50,
    seed: int = 0,
    observe: Observer = observe_plain,
    observation: str = "plain",
    threads: int = 1,
) -> DlgExperiment:
    """Attack ``num_images`` seeded test images through an observer and measure the damage.

    Args:
        dataset: Dataset name (``"mnist"`` for the papers' setting) or a loaded dataset.
        num_images: Images attacked, one at a time (batch size 1).
        method: ``"idlg"`` or ``"dlg"``.
        iterations: L-BFGS steps per image.
        seed: Seeds the image choice, the model weights, the observer and the dummies.
        observe: Maps the true flat gradient to what the adversary sees.
        observation: Name of the observer, for reports.
        threads: Torch threads.

    Returns:
        Per-image results and summary statistics.
    """
    data = load_dataset(dataset, seed) if isinstance(dataset, str) else dataset
    rng = np.random.default_rng(seed)
    picks = [int(i) for i in rng.choice(len(data.y_test), size=num_images, replace=False)]
    base = AttackConfig(method=method, iterations=iterations, seed=seed, threads=threads)
    start = time.perf_counter()
    with torch_threads(threads):
        model = dlg_model(data.input_shape, data.num_classes, seed)
        trials = tuple(
            _attack_one(model, data, index, observe, rng, replace(base, seed=seed + offset))
            for offset, index in enumerate(picks)
        )
    return DlgExperiment(data.name, observation, base, trials, time.perf_counter() - start)


def _attack_one(
    model: LeNet,
    data: Dataset,
    index: int,
    observe: Observer,
    rng: np.random.Generator,
    config: AttackConfig,
) -> DlgTrial:
    """Compute one test image's gradient, pass it through the observer and invert it."""
    image, label = data.x_test[index], int(data.y_test[index])
    seen = as_float_observation(observe(observed_gradient(model, image, label), rng))
    result = invert_gradient(model, seen, data.input_shape, data.num_classes, config)
    truth = image.numpy().astype(np.float32)
    metrics = reconstruction_metrics(result.image, truth, result.label, label)
    return DlgTrial(index, label, truth, result, metrics)
