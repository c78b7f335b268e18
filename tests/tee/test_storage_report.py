"""Trusted storage stays small and flat in the size of what the host keeps sealed."""

from __future__ import annotations

from pathlib import Path

from qflare.crypto import DeterministicRng, SignatureScheme
from qflare.tee import SimEnclave, SimulatedRootCa, call, storage_report
from qflare.tee.keyvault import GENERATE, KEYVAULT, GenerateKey, KeyKind

SECURE_BUDGET = 700


def test_secure_storage_is_small_and_flat_in_sealed_size(tmp_path: Path) -> None:
    root = SimulatedRootCa.generate(DeterministicRng(b"root"), scheme=SignatureScheme.ED25519)
    blobs: dict[str, bytes] = {}
    secure_sizes = []
    with SimEnclave.start(tmp_path, KEYVAULT, provisioner=root) as enclave:
        enclave.counter_advance("round", 1)
        blobs["identity"] = call(enclave, GENERATE, GenerateKey(kind=KeyKind.MLDSA65)).sealed
        for d in (1_000, 100_000, 1_000_000):
            blobs["model-state"] = enclave.seal(bytes(4 * d), label="model-state")
            enclave.counter_advance("round", enclave.counter_read("round") + 1)
            report = storage_report(tmp_path, blobs)
            secure_sizes.append(report.secure_total)
            assert report.host["sealed:model-state"] > 4 * d
    assert set(report.secure) == {"huk.bin", "rpmb.bin"}
    assert report.secure["huk.bin"] == 32
    assert len(set(secure_sizes)) == 1, secure_sizes  # flat in d
    assert report.secure_total < SECURE_BUDGET
    assert report.host["platform-chain.bin"] > 0 and report.host_total > 4_000_000
