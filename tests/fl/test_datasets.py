import numpy as np
import pytest
import torch

from qflare.fl import Dataset, load_dataset, load_digits


def test_digits_shapes_and_standardisation(digits: Dataset) -> None:
    assert digits.x_train.shape[1:] == (1, 8, 8) and digits.input_shape == (1, 8, 8)
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.num_classes == 10
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert float(digits.x_train.std()) == pytest.approx(1.0, abs=1e-3)


def test_mnist_is_the_real_5000_digit_sample_split_4000_1000(mnist: Dataset) -> None:
    assert mnist.x_train.shape == (4000, 1, 28, 28)
    assert mnist.x_test.shape == (1000, 1, 28, 28)
    # stratified: the 500-per-class sample gives exactly 100 test images per class
    assert np.bincount(mnist.y_test.numpy()).tolist() == [100] * 10


def test_split_is_reproducible_and_seed_dependent(digits: Dataset) -> None:
    again = load_digits(seed=0)
    other = load_digits(seed=1)
    assert torch.equal(again.x_train, digits.x_train)
    assert torch.equal(again.y_test, digits.y_test)
    assert not torch.equal(other.y_train, digits.y_train)


def test_unknown_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cifar10")
