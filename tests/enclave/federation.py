"""A small federation for the enclave tests: an authority, certified devices, a TA config."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from qflare.crypto import DeterministicRng, MlDsa65Signer, SignatureScheme, SystemRng
from qflare.protocol.enclave import SealedUpload, encode_upload, seal_update
from qflare.protocol.identity import (
    AuthorityKey,
    CertificateBody,
    encode_authority_key,
    issue_certificate,
)
from qflare.tee.aggregator_ta import AggregatorConfig

SESSION = "fed-test"
DIM = 8


@dataclass(frozen=True)
class Device:
    """A device: its id, identity key and certificate."""

    device_id: str
    signer: MlDsa65Signer
    certificate: bytes

    def upload(
        self,
        enclave_key: bytes,
        round_id: int,
        vector: npt.NDArray[np.float32],
        *,
        weight: float = 1.0,
        session: str = SESSION,
    ) -> SealedUpload:
        """This device's sealed upload (not yet encoded)."""
        return seal_update(
            vector,
            weight=weight,
            session=session,
            round_id=round_id,
            device_id=self.device_id,
            enclave_public_key=enclave_key,
            signer=self.signer,
            rng=SystemRng(),
        )

    def encoded(self, enclave_key: bytes, round_id: int, vector: npt.NDArray[np.float32]) -> bytes:
        """This device's encoded upload."""
        return encode_upload(self.upload(enclave_key, round_id, vector))


@dataclass(frozen=True)
class Federation:
    """An enrollment authority, its devices and the aggregator configuration pinning it."""

    authority: MlDsa65Signer
    devices: tuple[Device, ...]
    config: AggregatorConfig

    @property
    def certificates(self) -> tuple[bytes, ...]:
        """Every device's certificate."""
        return tuple(d.certificate for d in self.devices)


def certify(authority: MlDsa65Signer, device_id: str, index: int, signer: MlDsa65Signer) -> bytes:
    """A certificate of ``authority`` for ``signer``'s public key as ``device_id``."""
    key = AuthorityKey(scheme=SignatureScheme.MLDSA65, public_key=authority.public_key)
    body = CertificateBody(
        authority=key.fingerprint,
        serial=index,
        device_id=device_id,
        client_index=index,
        scheme=SignatureScheme.MLDSA65,
        identity_pk=signer.public_key,
        kem_pk=b"",
        issued_at=0.0,
    )
    return issue_certificate(authority, body)


def make_federation(n: int, *, seed: bytes = b"fed", min_accepted: int = 2) -> Federation:
    """``n`` certified devices and a config with ``min_accepted`` as the floor."""
    rng = DeterministicRng(seed)
    authority = MlDsa65Signer.generate(rng)
    devices = []
    for i in range(n):
        signer = MlDsa65Signer.generate(rng)
        devices.append(Device(f"dev-{i}", signer, certify(authority, f"dev-{i}", i, signer)))
    key = AuthorityKey(scheme=SignatureScheme.MLDSA65, public_key=authority.public_key)
    config = AggregatorConfig(authority=encode_authority_key(key), min_accepted=min_accepted)
    return Federation(authority, tuple(devices), config)


def vectors(n: int, dim: int = DIM, seed: int = 0) -> npt.NDArray[np.float32]:
    """``n`` random float32 updates."""
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def resign(device: Device, upload: SealedUpload, **changes: object) -> bytes:
    """``upload`` with ``changes``, signed again by ``device`` (a malicious device's upload)."""
    from qflare.protocol.enclave import UPLOAD_CONTEXT, upload_transcript

    changed = msgspec.structs.replace(upload, **changes)
    transcript = upload_transcript(
        changed.session,
        changed.round_id,
        changed.device_id,
        changed.enclave_key,
        changed.kem_ciphertext,
        changed.ciphertext,
    )
    signature = device.signer.sign(transcript, context=UPLOAD_CONTEXT)
    return encode_upload(msgspec.structs.replace(changed, signature=signature))
