import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qflare.fl import Dataset, NumPyClient, TorchClient, build_model


def _client(digits: Dataset, n: int = 200) -> TorchClient:
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    data = TensorDataset(digits.x_train[:n], digits.y_train[:n])
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(data, batch_size=20)
    return TorchClient(model, nn.CrossEntropyLoss(), loader)


def test_torch_client_is_a_numpy_client_and_learns(digits: Dataset) -> None:
    client = _client(digits)
    assert isinstance(client, NumPyClient)
    start = client.get_weights()
    before = client.evaluate(start, {})
    fit = client.fit(start, {"epochs": 3, "lr": 0.1, "seed": 1})
    after = client.evaluate(fit.weights, {})
    assert fit.num_examples == 200 and before.num_examples == 200
    assert after.loss < before.loss
    assert float(after.metrics["accuracy"]) > float(before.metrics["accuracy"]) + 0.3
    assert [w.shape for w in fit.weights] == [w.shape for w in start]


def test_fit_is_reproducible_with_a_seed(digits: Dataset) -> None:
    client = _client(digits)
    start = client.get_weights()
    config = {"epochs": 1, "lr": 0.05, "batch_size": 8, "seed": 3}
    a = client.fit(start, config).weights
    b = client.fit(start, config).weights
    c = client.fit(start, {**config, "seed": 4}).weights
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_fedprox_keeps_weights_closer_to_the_global_model(digits: Dataset) -> None:
    client = _client(digits)
    start = client.get_weights()
    config = {"epochs": 2, "lr": 0.1, "seed": 0}

    def drift(mu: float) -> float:
        new = client.fit(start, {**config, "proximal_mu": mu}).weights
        return float(sum(np.sum((n - s) ** 2) for n, s in zip(new, start, strict=True)))

    assert drift(5.0) < 0.5 * drift(0.0)
