"""Attestation: good evidence is accepted; forged, stale, mis-bound or simulated is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from qflare.crypto import (
    DeterministicRng,
    Ed25519Signer,
    SecretBytes,
    SignatureScheme,
    SystemRng,
)
from qflare.tee import (
    AttestationError,
    AttestationFailure,
    AttestationVerifier,
    SimEnclave,
    SimulatedRootCa,
    VerificationPolicy,
    call,
    reference_measurement,
    report_data_for,
    verify_evidence,
)
from qflare.tee.attestation import EvidenceClaims, EvidenceEnvelope, sign_evidence
from qflare.tee.keyvault import GENERATE, KEYVAULT, GenerateKey, KeyKind

ROOT_SCHEME = SignatureScheme.ED25519  # fast; the platform key below uses ML-DSA-65


@pytest.fixture(scope="module")
def root() -> SimulatedRootCa:
    return SimulatedRootCa.generate(DeterministicRng(b"root"), scheme=ROOT_SCHEME)


@pytest.fixture(scope="module")
def enclave(
    tmp_path_factory: pytest.TempPathFactory, root: SimulatedRootCa
) -> Iterator[SimEnclave]:
    with SimEnclave.start(tmp_path_factory.mktemp("attest"), KEYVAULT, provisioner=root) as running:
        yield running


@pytest.fixture(scope="module")
def enclave_key(enclave: SimEnclave) -> bytes:
    return call(enclave, GENERATE, GenerateKey(kind=KeyKind.X25519)).public_key


def _policy(
    root: SimulatedRootCa, *, allow_simulated: bool = True, config: bytes = b""
) -> VerificationPolicy:
    return VerificationPolicy(
        trusted_roots=(root.certificate,),
        measurements=frozenset({reference_measurement(KEYVAULT, config)}),
        allow_simulated=allow_simulated,
    )


def _reason(excinfo: pytest.ExceptionInfo[AttestationError]) -> AttestationFailure:
    return excinfo.value.reason


def _attest(verifier: AttestationVerifier, enclave: SimEnclave, key: bytes) -> tuple[bytes, bytes]:
    nonce = verifier.challenge()
    return nonce, enclave.evidence(report_data_for(key, nonce))


def test_good_evidence_is_accepted(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    verifier = AttestationVerifier(_policy(root), rng=SystemRng())
    nonce, evidence = _attest(verifier, enclave, enclave_key)
    result = verifier.verify(evidence, public_key=enclave_key, nonce=nonce)
    assert result.simulated and result.claims.simulated
    assert result.claims.measurement == enclave.measurement
    assert result.claims.ta_name == KEYVAULT.name
    assert result.platform.public_key == enclave.platform_public_key


def test_simulated_evidence_is_refused_by_default(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    verifier = AttestationVerifier(_policy(root, allow_simulated=False), rng=SystemRng())
    nonce, evidence = _attest(verifier, enclave, enclave_key)
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(evidence, public_key=enclave_key, nonce=nonce)
    assert _reason(excinfo) is AttestationFailure.SIMULATED


def test_wrong_measurement_is_refused(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    verifier = AttestationVerifier(_policy(root, config=b"other build"), rng=SystemRng())
    nonce, evidence = _attest(verifier, enclave, enclave_key)
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(evidence, public_key=enclave_key, nonce=nonce)
    assert _reason(excinfo) is AttestationFailure.MEASUREMENT


def test_wrong_key_binding_is_refused(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    verifier = AttestationVerifier(_policy(root), rng=SystemRng())
    nonce, evidence = _attest(verifier, enclave, enclave_key)
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(evidence, public_key=b"\x01" * 32, nonce=nonce)  # a MITM's key
    assert _reason(excinfo) is AttestationFailure.KEY_BINDING


def test_enclave_refuses_to_bind_a_key_it_does_not_hold(
    enclave: SimEnclave, enclave_key: bytes
) -> None:
    """The host cannot get the TA's measurement vouching for a key the host made."""
    host_key = Ed25519Signer(SecretBytes(b"\x03" * 32)).public_key
    with pytest.raises(AttestationError) as excinfo:
        enclave.evidence(report_data_for(host_key, b"\x07" * 32))
    assert _reason(excinfo) is AttestationFailure.KEY_BINDING
    with pytest.raises(AttestationError) as excinfo:
        enclave.evidence(b"\x00" * 64)
    assert _reason(excinfo) is AttestationFailure.KEY_BINDING
    assert enclave.evidence(report_data_for(enclave_key, b"\x07" * 32))


def test_stale_nonces_are_refused(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    now = [time.time()]
    verifier = AttestationVerifier(
        _policy(root), rng=SystemRng(), clock=lambda: now[0], nonce_ttl_s=60
    )
    nonce, evidence = _attest(verifier, enclave, enclave_key)
    verifier.verify(evidence, public_key=enclave_key, nonce=nonce)
    cases = {
        "replayed": (nonce, evidence),
        "never issued": (
            b"\x07" * 32,
            enclave.evidence(report_data_for(enclave_key, b"\x07" * 32)),
        ),
    }
    expired_nonce, expired_evidence = _attest(verifier, enclave, enclave_key)
    now[0] += 61
    cases["expired"] = (expired_nonce, expired_evidence)
    for name, (stale, stale_evidence) in cases.items():
        with pytest.raises(AttestationError) as excinfo:
            verifier.verify(stale_evidence, public_key=enclave_key, nonce=stale)
        assert _reason(excinfo) is AttestationFailure.STALE, name


def test_evidence_for_another_challenge_is_refused(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    verifier = AttestationVerifier(_policy(root), rng=SystemRng())
    first, second = verifier.challenge(), verifier.challenge()
    evidence = enclave.evidence(report_data_for(enclave_key, first))
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(evidence, public_key=enclave_key, nonce=second)
    assert _reason(excinfo) is AttestationFailure.STALE


def test_old_timestamp_is_refused(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    nonce = b"\x05" * 32
    evidence = enclave.evidence(report_data_for(enclave_key, nonce))
    policy = _policy(root)
    expected = report_data_for(enclave_key, nonce)
    verify_evidence(evidence, policy=policy, report_data=expected, now=time.time())
    with pytest.raises(AttestationError) as excinfo:
        verify_evidence(evidence, policy=policy, report_data=expected, now=time.time() + 3600)
    assert _reason(excinfo) is AttestationFailure.STALE


def _claims(
    enclave: SimEnclave, key: bytes, nonce: bytes, *, simulated: bool = True
) -> EvidenceClaims:
    return EvidenceClaims(
        measurement=enclave.measurement,
        report_data=report_data_for(key, nonce),
        platform_id="sim-platform",
        simulated=simulated,
        timestamp_ns=time.time_ns(),
        ta_name=KEYVAULT.name,
        ta_version=KEYVAULT.version,
    )


def _rogue_platform(root: SimulatedRootCa, seed: bytes) -> tuple[Ed25519Signer, bytes]:
    signer = Ed25519Signer.generate(DeterministicRng(seed))
    cert = root.certify_platform(
        platform_id="sim-platform",
        scheme=signer.scheme,
        public_key=signer.public_key,
        now=time.time(),
    )
    return signer, cert


def test_forged_evidence_is_refused(
    root: SimulatedRootCa, enclave: SimEnclave, enclave_key: bytes
) -> None:
    verifier = AttestationVerifier(_policy(root), rng=SystemRng())
    # 1. A look-alike root with the real root's name certifies an attacker's platform key.
    impostor_root = SimulatedRootCa.generate(DeterministicRng(b"impostor"), scheme=ROOT_SCHEME)
    signer, cert = _rogue_platform(impostor_root, b"rogue")
    nonce = verifier.challenge()
    forged = sign_evidence(_claims(enclave, enclave_key, nonce), signer, [cert])
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(forged, public_key=enclave_key, nonce=nonce)
    assert _reason(excinfo) is AttestationFailure.UNTRUSTED_CHAIN
    # 2. Genuine evidence whose payload is swapped for attacker-chosen claims.
    nonce, genuine = _attest(verifier, enclave, enclave_key)
    envelope = msgspec.msgpack.decode(genuine, type=EvidenceEnvelope)
    swapped = msgspec.structs.replace(
        envelope, payload=msgspec.msgpack.encode(_claims(enclave, b"\x02" * 32, nonce))
    )
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(msgspec.msgpack.encode(swapped), public_key=b"\x02" * 32, nonce=nonce)
    assert _reason(excinfo) is AttestationFailure.BAD_SIGNATURE
    # 3. Garbage.
    nonce = verifier.challenge()
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(genuine[:100], public_key=enclave_key, nonce=nonce)
    assert _reason(excinfo) is AttestationFailure.MALFORMED


def test_simulated_flag_cannot_be_stripped(enclave: SimEnclave, enclave_key: bytes) -> None:
    # Even with a key the simulated root really certified, claims saying "not simulated" do not
    # make the evidence acceptable: the chain itself is simulated.
    sim_root = SimulatedRootCa.generate(DeterministicRng(b"another"), scheme=ROOT_SCHEME)
    signer, cert = _rogue_platform(sim_root, b"platform")
    verifier = AttestationVerifier(_policy(sim_root, allow_simulated=False), rng=SystemRng())
    nonce = verifier.challenge()
    evidence = sign_evidence(_claims(enclave, enclave_key, nonce, simulated=False), signer, [cert])
    with pytest.raises(AttestationError) as excinfo:
        verifier.verify(evidence, public_key=enclave_key, nonce=nonce)
    assert _reason(excinfo) is AttestationFailure.SIMULATED


def test_unprovisioned_platform_cannot_attest(tmp_path: Path) -> None:
    with SimEnclave.start(tmp_path, KEYVAULT) as bare, pytest.raises(AttestationError) as excinfo:
        bare.evidence(b"\x00" * 64)
    assert _reason(excinfo) is AttestationFailure.NOT_PROVISIONED
    assert str(excinfo.value).count("not-provisioned") == 1


def test_untrusted_root_in_policy_is_refused() -> None:
    root = SimulatedRootCa.generate(DeterministicRng(b"r"), scheme=ROOT_SCHEME)
    forged_root = bytearray(root.certificate)
    forged_root[-1] ^= 1
    policy = VerificationPolicy(trusted_roots=(bytes(forged_root),), measurements=frozenset())
    with pytest.raises(AttestationError) as excinfo:
        AttestationVerifier(policy, rng=SystemRng())
    assert _reason(excinfo) is AttestationFailure.UNTRUSTED_CHAIN
