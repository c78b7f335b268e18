import pytest

from qflare.fl import Dataset, load_digits, load_mnist


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits(seed=0)


@pytest.fixture(scope="session")
def mnist() -> Dataset:
    return load_mnist(seed=0)
