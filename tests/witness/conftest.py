import pytest

from qflare.crypto import DeterministicRng, MlDsa65Signer


@pytest.fixture(scope="session")
def other_signer():
    return MlDsa65Signer.generate(DeterministicRng(b"someone-else"))
