"""Gradient-inversion attacks: DLG (Zhu et al. 2019) and iDLG (Zhao et al. 2020).

An attacker who sees one client's gradient for a single example optimises a dummy image
(and, for DLG, a dummy soft label) with L-BFGS until the dummy's gradient matches the
observed one. iDLG first reads the true label off the last layer: with cross-entropy,
``dL/dW_c = (p_c - y_c) * h`` and ``h >= 0`` after a sigmoid, so only the true class's row
is negative.

The attack takes *any* flat vector as the observation: the plain gradient, a dequantised
gradient, or a secure-aggregation upload reinterpreted as floats
(:func:`as_float_observation`). Non-finite entries are zeroed and the matching loss is
computed in float64, so garbage observations yield garbage reconstructions instead of
crashes. Everything is seeded and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from qflare.fl.models import FlatVector, LeNet
from qflare.fl.runtime import torch_threads

__all__ = [
    "AttackConfig",
    "AttackMetrics",
    "AttackResult",
    "Method",
    "as_float_observation",
    "dlg_model",
    "infer_label",
    "invert_gradient",
    "observed_gradient",
    "reconstruction_metrics",
]

Method = Literal["dlg", "idlg"]


@dataclass(frozen=True)
class AttackConfig:
    """Settings of a gradient-inversion run.

    Attributes:
        method: ``"dlg"`` (optimise image and soft label) or ``"idlg"`` (label inferred).
        iterations: L-BFGS ``step`` calls (the papers use 300 for MNIST).
        inner_iterations: L-BFGS iterations per step (``max_iter``; torch's default is 20).
        lr: L-BFGS learning rate.
        line_search: ``"strong_wolfe"`` (default) or ``None`` for the original DLG code's fixed
            step, which often diverges on standardised images.
        seed: Seed of the dummy initialisation.
        threads: Torch intra-op threads during the attack.
    """

    method: Method = "idlg"
    iterations: int = 50
    inner_iterations: int = 20
    lr: float = 1.0
    line_search: Literal["strong_wolfe"] | None = "strong_wolfe"
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True)
class AttackResult:
    """What the attacker recovered.

    Attributes:
        image: Reconstructed input ``(C, H, W)`` (the lowest-loss iterate seen).
        label: Inferred label (iDLG rule, or argmax of DLG's dummy label at that iterate).
        loss: Gradient-matching loss of ``image``.
        evaluations: Loss evaluations performed.
    """

    image: npt.NDArray[np.float32]
    label: int
    loss: float
    evaluations: int


@dataclass(frozen=True)
class AttackMetrics:
    """Quality of a reconstruction against the private example.

    Attributes:
        mse: Mean squared pixel error (NaN pixels count as 0).
        psnr_db: ``10 log10(range^2 / mse)`` with ``range`` = max - min of the true image.
        label_correct: Whether the inferred label equals the true one.
    """

    mse: float
    psnr_db: float
    label_correct: bool


def dlg_model(
    input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, seed: int = 0
) -> LeNet:
    """The attacked model: sigmoid LeNet with DLG's ``U(-0.5, 0.5)`` initialisation.

    Args:
        input_shape: ``(C, H, W)`` of the images (square).
        num_classes: Output logits.
        seed: Seed of the weights.

    Returns:
        The model.
    """
    channels, side, _ = input_shape
    model = LeNet(num_classes, channels, side, activation="sigmoid")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            nn.init.uniform_(param, -0.5, 0.5, generator=generator)
    return model


def observed_gradient(model: nn.Module, image: torch.Tensor, label: int) -> FlatVector:
    """The flat cross-entropy gradient of one example, as a client would compute it.

    Args:
        model: The shared model.
        image: One example ``(C, H, W)``.
        label: Its true label.

    Returns:
        The gradient w.r.t. ``model.parameters()``, flattened (float32).
    """
    logits = model(image.unsqueeze(0))
    loss = functional.cross_entropy(logits, torch.tensor([label]))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).detach().numpy().astype(np.float32)


def as_float_observation(upload: npt.NDArray[np.generic]) -> FlatVector:
    """Reinterpret whatever an attacker captured as a float32 vector.

    ``uint32`` / ``int32`` words (a masked ring upload) are viewed bit for bit as float32;
    64-bit words are viewed as float64 and cast; floating arrays are cast.

    Args:
        upload: The captured flat array.

    Returns:
        A float32 vector of the same length.
    """
    flat = np.ascontiguousarray(upload).reshape(-1)
    if flat.dtype.kind in "ui" and flat.dtype.itemsize == 4:
        return flat.view(np.float32).copy()
    if flat.dtype.kind in "ui" and flat.dtype.itemsize == 8:
        with np.errstate(over="ignore", invalid="ignore"):
            return flat.view(np.float64).astype(np.float32)
    return flat.astype(np.float32)


def _targets(model: nn.Module, observed: npt.NDArray[np.floating]) -> list[torch.Tensor]:
    """Split the observation per parameter, zero non-finite entries, keep float64."""
    with np.errstate(invalid="ignore"):  # random bit patterns include signalling NaNs
        wide = np.asarray(observed, dtype=np.float64)
    clean = np.nan_to_num(wide, nan=0.0, posinf=0.0, neginf=0.0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    sizes = [int(np.prod(s)) for s in shapes]
    if clean.ndim != 1 or clean.shape[0] != sum(sizes):
        raise ValueError(f"observation has shape {clean.shape}, model needs ({sum(sizes)},)")
    cuts = np.cumsum(sizes)[:-1]
    parts = np.split(clean, cuts)
    return [torch.from_numpy(p.reshape(s).copy()) for p, s in zip(parts, shapes, strict=True)]


def infer_label(model: nn.Module, observed: npt.NDArray[np.floating], num_classes: int) -> int:
    """iDLG: the class whose last-layer weight-gradient row sums lowest.

    Args:
        model: The shared model (its last 2-D parameter with ``num_classes`` rows is used).
        observed: Flat observed gradient.
        num_classes: Number of classes.

    Returns:
        The inferred label.

    Raises:
        ValueError: If the model has no ``(num_classes, features)`` weight.
    """
    targets = _targets(model, observed)
    shapes = [tuple(p.shape) for p in model.parameters()]
    rows = [i for i, s in enumerate(shapes) if len(s) == 2 and s[0] == num_classes]
    if not rows:
        raise ValueError(f"model has no ({num_classes}, features) weight matrix")
    return int(torch.argmin(targets[rows[-1]].sum(dim=1)))


class _Matcher:
    """Gradient-matching objective plus best-iterate bookkeeping for L-BFGS."""

    def __init__(
        self,
        model: nn.Module,
        targets: list[torch.Tensor],
        dummy: torch.Tensor,
        label: torch.Tensor,
        soft_label: bool,
    ) -> None:
        self.model, self.targets, self.dummy, self.label = model, targets, dummy, label
        self.soft_label = soft_label
        self.variables = [dummy, label] if soft_label else [dummy]
        self.best_loss = math.inf
        self.best_image = dummy.detach().clone()
        self.best_label = int(label.detach().argmax()) if soft_label else int(label[0])
        self.evaluations = 0

    def _task_loss(self) -> torch.Tensor:
        logits = self.model(self.dummy)
        if self.soft_label:
            soft = functional.softmax(self.label, dim=-1)
            return torch.sum(-soft * functional.log_softmax(logits, dim=-1))
        return functional.cross_entropy(logits, self.label)

    def __call__(self) -> torch.Tensor:
        params = list(self.model.parameters())
        grads = torch.autograd.grad(self._task_loss(), params, create_graph=True)
        loss = sum(
            (((g.double() - t) ** 2).sum() for g, t in zip(grads, self.targets, strict=True)),
            torch.zeros((), dtype=torch.float64),
        )
        for var, grad in zip(
            self.variables, torch.autograd.grad(loss, self.variables), strict=True
        ):
            var.grad = grad
        value = float(loss.detach())
        self.evaluations += 1
        if math.isfinite(value) and value < self.best_loss:
            self.best_loss = value
            self.best_image = self.dummy.detach().clone()
            if self.soft_label:
                self.best_label = int(self.label.detach().argmax())
        return loss.detach()


def invert_gradient(
    model: nn.Module,
    observed: npt.NDArray[np.floating],
    input_shape: tuple[int, int, int],
    num_classes: int,
    config: AttackConfig | None = None,
) -> AttackResult:
    """Reconstruct one training example from an observed flat gradient.

    Args:
        model: The model the gradient was computed on (its weights are not changed).
        observed: Flat vector the attacker saw (any float dtype; non-finite entries zeroed).
        input_shape: ``(C, H, W)`` of the private example.
        num_classes: Number of classes.
        config: Attack settings (defaults to iDLG, 50 L-BFGS steps).

    Returns:
        The reconstruction and inferred label.
    """
    cfg = config or AttackConfig()
    with torch_threads(cfg.threads):
        targets = _targets(model, observed)
        generator = torch.Generator().manual_seed(cfg.seed)
        dummy = torch.randn((1, *input_shape), generator=generator).requires_grad_(True)
        if cfg.method == "dlg":
            label = torch.randn((1, num_classes), generator=generator).requires_grad_(True)
        else:
            label = torch.tensor([infer_label(model, observed, num_classes)])
        matcher = _Matcher(model, targets, dummy, label, soft_label=cfg.method == "dlg")
        _run_lbfgs(matcher, cfg)
    image = matcher.best_image[0].numpy().astype(np.float32)
    return AttackResult(image, matcher.best_label, matcher.best_loss, matcher.evaluations)


def _run_lbfgs(matcher: _Matcher, cfg: AttackConfig) -> None:
    optimizer = torch.optim.LBFGS(
        matcher.variables,
        lr=cfg.lr,
        max_iter=cfg.inner_iterations,
        history_size=100,
        line_search_fn=cfg.line_search,
    )
    step = cast(Callable[[Callable[[], torch.Tensor]], object], optimizer.step)
    for _ in range(cfg.iterations):
        step(matcher)
        if not math.isfinite(float(matcher.dummy.detach().sum())) or matcher.best_loss == 0.0:
            break


def reconstruction_metrics(
    reconstruction: npt.NDArray[np.floating],
    truth: npt.NDArray[np.floating],
    inferred_label: int,
    true_label: int,
) -> AttackMetrics:
    """MSE, PSNR and label correctness of a reconstruction.

    Args:
        reconstruction: Reconstructed image (any shape matching ``truth``).
        truth: The private (normalised) image.
        inferred_label: Label the attacker inferred.
        true_label: The true label.

    Returns:
        The metrics; PSNR uses the true image's value range as the peak.
    """
    rec = np.nan_to_num(np.asarray(reconstruction, dtype=np.float64), nan=0.0)
    ref = np.asarray(truth, dtype=np.float64)
    with np.errstate(over="ignore"):
        mse = float(np.mean((rec.reshape(ref.shape) - ref) ** 2))
    data_range = float(ref.max() - ref.min())
    psnr = math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)
    return AttackMetrics(mse, psnr, inferred_label == true_label)
