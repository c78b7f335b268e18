"""The node attests the enclave before it seals anything: each refusal, then the happy path."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import numpy as np
import pytest

from qflare.crypto import DeterministicRng, HybridKem, SystemRng
from qflare.node.enclave_upload import EnclaveNotTrusted, EnclaveUploader, enclave_policy
from qflare.tee import AttestationError, AttestationFailure, SimulatedRootCa
from qflare.tee.aggregator_host import AggregatorHost
from qflare.tee.aggregator_ta import AggregatorConfig
from qflare.tee.attestation import report_data_for
from tests.enclave.federation import DIM, SESSION, make_federation, vectors

FED = make_federation(3, seed=b"node")


@pytest.fixture(scope="module")
def root() -> SimulatedRootCa:
    return SimulatedRootCa.generate(DeterministicRng(b"root"))


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory, root: SimulatedRootCa
) -> Iterator[AggregatorHost]:
    state = tmp_path_factory.mktemp("node-agg")
    with AggregatorHost.start(state, FED.config, provisioner=root) as running:
        yield running


def _uploader(
    root: SimulatedRootCa,
    index: int = 0,
    *,
    config: AggregatorConfig = FED.config,
    allow_simulated: bool = True,
) -> EnclaveUploader:
    device = FED.devices[index]
    return EnclaveUploader(
        device_id=device.device_id,
        signer=device.signer,
        session=SESSION,
        policy=enclave_policy(config, (root.certificate,), allow_simulated=allow_simulated),
        rng=SystemRng(),
    )


def _refusal(uploader: EnclaveUploader, evidence: bytes, key: bytes, nonce: bytes) -> str:
    with pytest.raises(AttestationError) as info:
        uploader.trust(evidence, public_key=key, nonce=nonce)
    assert uploader.enclave_key is None
    with pytest.raises(EnclaveNotTrusted):
        uploader.seal(1, vectors(1)[0])
    return info.value.reason


def test_simulated_evidence_is_refused_unless_allowed(
    host: AggregatorHost, root: SimulatedRootCa
) -> None:
    node = _uploader(root, allow_simulated=False)
    nonce = node.challenge()
    assert _refusal(node, host.evidence(nonce), host.public_key, nonce) is (
        AttestationFailure.SIMULATED
    )


def test_a_wrong_measurement_is_refused(host: AggregatorHost, root: SimulatedRootCa) -> None:
    lax = msgspec.structs.replace(FED.config, min_accepted=1)  # another floor: another enclave
    node = _uploader(root, config=lax)
    nonce = node.challenge()
    assert _refusal(node, host.evidence(nonce), host.public_key, nonce) is (
        AttestationFailure.MEASUREMENT
    )


def test_a_substituted_key_is_refused(host: AggregatorHost, root: SimulatedRootCa) -> None:
    node = _uploader(root)
    nonce = node.challenge()
    evidence = host.evidence(nonce)
    own = HybridKem.generate(SystemRng()).public_key  # the host's own key, not the enclave's
    assert _refusal(node, evidence, own, nonce) is AttestationFailure.KEY_BINDING
    # nor can the host get evidence binding its own key out of the enclave
    other = _uploader(root)
    with pytest.raises(AttestationError) as info:
        host.enclave.evidence(report_data_for(own, other.challenge()))
    assert info.value.reason is AttestationFailure.KEY_BINDING


def test_attested_uploads_aggregate_and_a_node_seals_once_per_round(
    host: AggregatorHost, root: SimulatedRootCa
) -> None:
    vecs = vectors(3, seed=11)
    host.begin_round(
        session=SESSION, round_id=1, dim=DIM, certificates=FED.certificates, min_accepted=3
    )
    for i, vec in enumerate(vecs):
        node = _uploader(root, i)
        nonce = node.challenge()
        result = node.trust(host.evidence(nonce), public_key=host.public_key, nonce=nonce)
        assert result.simulated
        assert host.submit(node.seal(1, vec)).accepted
        with pytest.raises(EnclaveNotTrusted):
            node.seal(1, vec)
    out = host.finish(1)
    np.testing.assert_allclose(out.delta, vecs.astype(np.float64).mean(axis=0), rtol=1e-12)
