import pytest

from qflare.crypto import DeterministicRng, MlDsa65Signer


@pytest.fixture(scope="session")
def signer():
    return MlDsa65Signer.generate(DeterministicRng(b"ledger-operator"))


@pytest.fixture(scope="session")
def other_signer():
    return MlDsa65Signer.generate(DeterministicRng(b"someone-else"))


@pytest.fixture(scope="session")
def witnesses():
    """Three witness keys."""
    return [MlDsa65Signer.generate(DeterministicRng(f"witness-{i}".encode())) for i in range(3)]
