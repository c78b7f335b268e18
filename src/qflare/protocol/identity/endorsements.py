"""Keystore keys endorsed by a device: authority -> device certificate -> keystore key.

A CHRONOS keystore in an enclave signs epoch keys with a key made inside the enclave; the
device's certified identity key endorses that key, and peers (and their enclaves) follow the
chain.
"""

from __future__ import annotations

from typing import Final

import msgspec

from qflare.crypto import CryptoError, Signer, verify_signature
from qflare.protocol.identity.certificates import (
    AuthorityKey,
    CertificateBody,
    IdentityError,
    verify_certificate,
)

__all__ = [
    "ENDORSE_CONTEXT",
    "EndorsedKey",
    "endorse_key",
    "endorsement_transcript",
    "verify_endorsed_key",
]

ENDORSE_CONTEXT: Final = b"qflare/authority/v1/keystore-endorsement"
_VERSION: Final = 1
_ENCODER: Final = msgspec.msgpack.Encoder()


class EndorsedKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A peer's certificate and, when its keystore signs with another key, the endorsement.

    A CHRONOS keystore in an enclave signs epoch keys with a key made inside the enclave. The
    device's certified identity key endorses that key once (:func:`endorse_key`); peers (and
    their enclaves) follow the chain authority -> device -> keystore key.

    Attributes:
        certificate: The device certificate.
        keystore_pk: The key that signs the device's protocol messages (empty: the identity key).
        endorsement: The identity key's signature over :func:`endorsement_transcript`.
        enclave: Whether the device says the keystore key lives in an enclave.
        version: Format version.
    """

    certificate: bytes
    keystore_pk: bytes = b""
    endorsement: bytes = b""
    enclave: bool = False
    version: int = _VERSION


def endorsement_transcript(
    session: str, client_index: int, keystore_pk: bytes, *, enclave: bool
) -> bytes:
    """Bytes an identity key signs to endorse a keystore key of ``client_index``."""
    return _ENCODER.encode((session, client_index, keystore_pk, enclave))


def endorse_key(
    signer: Signer,
    certificate: bytes,
    session: str,
    client_index: int,
    keystore_pk: bytes,
    *,
    enclave: bool,
) -> EndorsedKey:
    """The device's endorsement of ``keystore_pk`` (returns a plain entry for its own key)."""
    if keystore_pk == signer.public_key:
        return EndorsedKey(certificate=certificate)
    transcript = endorsement_transcript(session, client_index, keystore_pk, enclave=enclave)
    return EndorsedKey(
        certificate=certificate,
        keystore_pk=keystore_pk,
        endorsement=signer.sign(transcript, context=ENDORSE_CONTEXT),
        enclave=enclave,
    )


def verify_endorsed_key(
    entry: EndorsedKey, authority: AuthorityKey, session: str, client_index: int
) -> tuple[CertificateBody, bytes]:
    """Follow authority -> certificate -> endorsement; return the body and the signing key.

    Raises:
        IdentityError: any link is forged, or the certificate is for another client index.
    """
    body = verify_certificate(entry.certificate, authority)
    if body.client_index != client_index:
        raise IdentityError(f"certificate is for client {body.client_index}")
    if not entry.keystore_pk:
        return body, body.identity_pk
    transcript = endorsement_transcript(
        session, client_index, entry.keystore_pk, enclave=entry.enclave
    )
    try:
        verify_signature(
            body.scheme, body.identity_pk, entry.endorsement, transcript, context=ENDORSE_CONTEXT
        )
    except CryptoError:
        raise IdentityError("keystore key endorsement does not verify") from None
    return body, entry.keystore_pk
