"""Small models and flat-vector helpers.

Secure aggregation works on one flat vector per client, so every model here exposes its
trainable parameters as a single float32 vector (:func:`get_flat` / :func:`set_flat`) in the
order of ``model.parameters()``. The models have no buffers (no batch norm), so the parameters
are the whole state.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = [
    "MODEL_NAMES",
    "Activation",
    "DigitsCNN",
    "FlatVector",
    "LeNet",
    "build_model",
    "default_model_name",
    "get_flat",
    "join_flat",
    "num_parameters",
    "set_flat",
    "split_flat",
]

FlatVector = npt.NDArray[np.float32]
Activation = Literal["relu", "sigmoid"]
MODEL_NAMES: tuple[str, ...] = ("lenet", "digits_cnn", "mlp")


def _act(kind: Activation) -> nn.Module:
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {kind!r}")


class LeNet(nn.Module):
    """The LeNet variant of DLG (Zhu et al. 2019): three 5x5 convolutions and one linear layer.

    With ``activation="sigmoid"`` it is the twice-differentiable model the gradient-inversion
    papers attack; ``"relu"`` trains faster and is the default for federated runs.

    Args:
        num_classes: Output logits.
        in_channels: Image channels.
        side: Image height and width (28 for MNIST).
        activation: ``"relu"`` or ``"sigmoid"``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        side: int = 28,
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, padding=2, stride=2),
            _act(activation),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            _act(activation),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            _act(activation),
        )
        reduced = (side + 3) // 4  # two stride-2 convolutions with padding 2
        self.fc = nn.Linear(12 * reduced * reduced, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for a batch ``(N, C, side, side)``."""
        logits: torch.Tensor = self.fc(self.body(x).flatten(1))
        return logits


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: two 3x3 convolutions, 2x2 pooling, two linear layers.

    Args:
        num_classes: Output logits.
        activation: ``"relu"`` or ``"sigmoid"``.
    """

    def __init__(self, num_classes: int = 10, activation: Activation = "relu") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            _act(activation),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            _act(activation),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Linear(32 * 4 * 4, 64), _act(activation), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for a batch ``(N, 1, 8, 8)``."""
        logits: torch.Tensor = self.head(self.features(x).flatten(1))
        return logits


def _mlp(in_features: int, num_classes: int, activation: Activation) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, 64), _act(activation), nn.Linear(64, num_classes)
    )


def default_model_name(input_shape: tuple[int, int, int]) -> str:
    """Pick the default architecture for an input shape ``(C, H, W)``.

    Args:
        input_shape: Shape of one example.

    Returns:
        ``"digits_cnn"`` for 8x8 inputs, ``"lenet"`` otherwise.
    """
    return "digits_cnn" if input_shape[1:] == (8, 8) else "lenet"


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    activation: Activation = "relu",
    seed: int = 0,
) -> nn.Module:
    """Build a freshly initialised model; the seed fixes the initial weights.

    The global torch RNG is forked, so building a model never disturbs other code's
    random stream.

    Args:
        name: ``"lenet"``, ``"digits_cnn"`` or ``"mlp"``.
        input_shape: Shape of one example ``(C, H, W)``.
        num_classes: Output logits.
        activation: ``"relu"`` (training) or ``"sigmoid"`` (gradient-inversion experiments).
        seed: Seed of the initial weights.

    Returns:
        The model in training mode.

    Raises:
        ValueError: On an unknown name or an input shape the model cannot take.
    """
    channels, height, width = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "lenet" and height == width:
            return LeNet(num_classes, channels, height, activation)
        if name == "digits_cnn" and (channels, height, width) == (1, 8, 8):
            return DigitsCNN(num_classes, activation)
        if name == "mlp":
            return _mlp(channels * height * width, num_classes, activation)
    raise ValueError(f"model {name!r} does not take inputs of shape {input_shape}")


def num_parameters(model: nn.Module) -> int:
    """Count trainable scalars (the length of :func:`get_flat`).

    Args:
        model: Any module.

    Returns:
        The number of parameter elements.
    """
    return sum(p.numel() for p in model.parameters())


def get_flat(model: nn.Module) -> FlatVector:
    """Copy all parameters into one float32 vector.

    Args:
        model: Any module.

    Returns:
        A new contiguous float32 array of length :func:`num_parameters`.
    """
    with torch.no_grad():
        parts = [p.detach().reshape(-1).to(torch.float32).cpu() for p in model.parameters()]
        return torch.cat(parts).numpy().copy()


def set_flat(model: nn.Module, flat: npt.NDArray[np.floating]) -> None:
    """Load a flat vector (as produced by :func:`get_flat`) into the parameters in place.

    Args:
        model: The module to overwrite.
        flat: Vector of length :func:`num_parameters`; cast to each parameter's dtype.

    Raises:
        ValueError: If the length does not match.
    """
    expected = num_parameters(model)
    if flat.ndim != 1 or flat.shape[0] != expected:
        raise ValueError(f"flat vector has shape {flat.shape}, model needs ({expected},)")
    source = torch.from_numpy(np.ascontiguousarray(flat))
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(source[offset : offset + n].view_as(p).to(p.dtype))
            offset += n


def split_flat(
    flat: npt.NDArray[np.floating], shapes: list[tuple[int, ...]]
) -> list[npt.NDArray[np.float32]]:
    """Cut a flat vector into float32 arrays of the given shapes (copies).

    Args:
        flat: Vector whose length is the total size of ``shapes``.
        shapes: One shape per parameter, in order.

    Returns:
        The arrays.

    Raises:
        ValueError: If the sizes do not match.
    """
    sizes = [int(np.prod(s)) for s in shapes]
    if flat.ndim != 1 or flat.shape[0] != sum(sizes):
        raise ValueError(f"flat vector has shape {flat.shape}, shapes need ({sum(sizes)},)")
    cuts = np.cumsum(sizes)[:-1]
    return [
        part.reshape(shape).astype(np.float32)
        for part, shape in zip(np.split(flat, cuts), shapes, strict=True)
    ]


def join_flat(arrays: list[npt.NDArray[np.float32]]) -> FlatVector:
    """Concatenate per-parameter arrays into one float32 vector (inverse of :func:`split_flat`).

    Args:
        arrays: Arrays in parameter order.

    Returns:
        A new contiguous float32 vector.
    """
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
