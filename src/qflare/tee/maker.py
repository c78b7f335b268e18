"""A *simulated* TEE manufacturer kept on disk: the root that certifies enclave platforms.

Real TEEs ship with a platform attestation key certified by their vendor (Intel, ARM partners,
AWS). The simulation needs a stand-in: ``qflare tee maker-init`` makes a root key (``maker.key``,
0600) and its self-signed certificate (``maker.cert``, to give servers as an attestation root).
A node started with ``--tee-maker`` has its enclave platform certified by it on first use, as a
factory would. Everything it issues says ``simulated=True``; servers refuse it unless
``attestation_allow_simulated`` is set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from qflare.crypto import MlDsa65Signer, Rng, SecretBytes
from qflare.tee.certs import SimulatedRootCa
from qflare.tee.storage import read_private_file, write_private_file

__all__ = ["MAKER_CERT", "MAKER_KEY", "init_maker", "load_maker"]

MAKER_KEY, MAKER_CERT, _MAKER_META = "maker.key", "maker.cert", "maker.json"


def init_maker(directory: Path, rng: Rng) -> SimulatedRootCa:
    """Create the simulated manufacturer in ``directory`` (refused if one exists)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (directory / MAKER_KEY).exists():
        raise FileExistsError(f"{directory / MAKER_KEY} exists: a maker is already there")
    signer = MlDsa65Signer.generate(rng)
    created = int(time.time())
    write_private_file(directory / MAKER_KEY, signer.seed().reveal())
    (directory / _MAKER_META).write_text(json.dumps({"created": created}))
    maker = SimulatedRootCa(signer, now=created)
    (directory / MAKER_CERT).write_bytes(maker.certificate)
    return maker


def load_maker(directory: Path) -> SimulatedRootCa:
    """Load the simulated manufacturer of ``directory`` (the same root certificate each time)."""
    seed = read_private_file(directory / MAKER_KEY)
    created = int(json.loads((directory / _MAKER_META).read_text())["created"])
    return SimulatedRootCa(MlDsa65Signer(SecretBytes(seed)), now=created)
