import numpy as np
import pytest
import torch

from qflare.fl import (
    LeNet,
    build_model,
    get_flat,
    join_flat,
    num_parameters,
    set_flat,
    split_flat,
)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("lenet", (1, 28, 28)), ("lenet", (1, 8, 8)), ("digits_cnn", (1, 8, 8)), ("mlp", (1, 8, 8))],
)
def test_models_produce_logits_and_flatten_round_trip(
    name: str, shape: tuple[int, int, int]
) -> None:
    model = build_model(name, shape, 10, seed=0)
    assert model(torch.zeros(3, *shape)).shape == (3, 10)
    flat = get_flat(model)
    assert flat.dtype == np.float32 and flat.shape == (num_parameters(model),)
    other = build_model(name, shape, 10, seed=1)
    assert not np.array_equal(get_flat(other), flat)
    set_flat(other, flat)
    assert np.array_equal(get_flat(other), flat)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(x), other(x))


def test_lenet_matches_dlg_sizes() -> None:
    # three 5x5 convs with 12 channels and one 588 -> 10 linear layer
    assert num_parameters(LeNet()) == (25 * 12 + 12) + 2 * (25 * 144 + 12) + (588 * 10 + 10)
    assert isinstance(LeNet(activation="sigmoid").body[1], torch.nn.Sigmoid)
    assert isinstance(LeNet().body[1], torch.nn.ReLU)


def test_build_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("digits_cnn", (1, 8, 8), 10, seed=7)
    after = torch.rand(1)
    b = build_model("digits_cnn", (1, 8, 8), 10, seed=7)
    assert torch.equal(before, after)
    assert np.array_equal(get_flat(a), get_flat(b))


def test_split_and_join_are_inverse() -> None:
    model = build_model("digits_cnn", (1, 8, 8), 10)
    shapes = [tuple(p.shape) for p in model.parameters()]
    flat = get_flat(model)
    arrays = split_flat(flat, shapes)
    assert [a.shape for a in arrays] == shapes
    assert np.array_equal(join_flat(arrays), flat)


def test_wrong_lengths_are_refused() -> None:
    model = build_model("mlp", (1, 8, 8), 10)
    with pytest.raises(ValueError):
        set_flat(model, np.zeros(num_parameters(model) + 1, dtype=np.float32))
    with pytest.raises(ValueError):
        split_flat(np.zeros(5, dtype=np.float32), [(2, 2)])
    with pytest.raises(ValueError):
        build_model("digits_cnn", (1, 28, 28), 10)
