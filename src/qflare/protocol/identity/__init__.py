"""Who a peer is: device certificates from an enrollment authority the server does not hold.

The enrollment authority (``qflare authority``) is the only party that can say "client index
``i`` of this federation is the device whose identity key is ``pk``". It signs a
:class:`CertificateBody` with its ML-DSA-65 key; every client verifies each peer's certificate
against the authority key it pinned at enrollment before it uses the peer's identity key. The
aggregation server only relays certificates: it cannot substitute a peer's key, and it cannot
mint devices.

Also here, because the node, the server, the authority and the CHRONOS trusted application all
need them: single-use enrollment tokens (signed claims plus a secret that only the token holder
and the authority know, so a relaying server cannot enroll its own keys with a token it sees),
endorsements of per-device keystore keys, and :class:`IdentityDirectory`, the checked map from
client index to identity key that the protocol machines read.
"""

from qflare.protocol.identity.certificates import (
    CERT_CONTEXT,
    AuthorityKey,
    CertificateBody,
    IdentityError,
    certificate_digest,
    decode_authority_key,
    encode_authority_key,
    issue_certificate,
    parse_certificate,
    verify_certificate,
)
from qflare.protocol.identity.directory import CertificateCache, IdentityDirectory
from qflare.protocol.identity.endorsements import (
    ENDORSE_CONTEXT,
    EndorsedKey,
    endorse_key,
    endorsement_transcript,
    verify_endorsed_key,
)
from qflare.protocol.identity.tokens import (
    MAX_TOKEN_CHARS,
    TOKEN_CONTEXT,
    TOKEN_PREFIX,
    SignedToken,
    TokenClaims,
    decode_claims,
    enrollment_proof,
    issue_token,
    parse_token,
    verify_token,
)

__all__ = [
    "CERT_CONTEXT",
    "ENDORSE_CONTEXT",
    "MAX_TOKEN_CHARS",
    "TOKEN_CONTEXT",
    "TOKEN_PREFIX",
    "AuthorityKey",
    "CertificateBody",
    "CertificateCache",
    "EndorsedKey",
    "IdentityDirectory",
    "IdentityError",
    "SignedToken",
    "TokenClaims",
    "certificate_digest",
    "decode_authority_key",
    "decode_claims",
    "encode_authority_key",
    "endorse_key",
    "endorsement_transcript",
    "enrollment_proof",
    "issue_certificate",
    "issue_token",
    "parse_certificate",
    "parse_token",
    "verify_certificate",
    "verify_endorsed_key",
    "verify_token",
]
