"""An in-memory enrollment authority for simulations, benchmarks and tests.

It issues the same certificates as ``qflare authority`` (:mod:`qflare.protocol.identity`), so
the simulated clients check their peers exactly as enrolled nodes do; only the token step of
enrollment is skipped. One :class:`~qflare.protocol.identity.CertificateCache` is shared by the
simulated devices of a process: each certificate is verified once, as a device verifies each
peer once rather than every round.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from qflare.crypto import DeterministicRng, MlDsa65Signer, Rng, SignatureScheme, Signer
from qflare.protocol.identity import (
    AuthorityKey,
    CertificateBody,
    CertificateCache,
    EndorsedKey,
    IdentityDirectory,
    IdentityError,
    issue_certificate,
)

__all__ = ["SimAuthority"]


class SimAuthority:
    """An authority key in this process, with a certificate cache for its simulated devices.

    Args:
        rng: Randomness for the authority key.
    """

    def __init__(self, rng: Rng) -> None:
        self._signer = MlDsa65Signer.generate(rng)
        self.key = AuthorityKey(public_key=self._signer.public_key)
        self.cache = CertificateCache()
        self._serial = 0

    @staticmethod
    @cache
    def default() -> SimAuthority:
        """The process's default simulation authority (a fixed, public test key)."""
        return SimAuthority(DeterministicRng(b"qflare simulation authority"))

    def certify(self, index: int, signer: Signer, *, kem_pk: bytes = b"") -> bytes:
        """A certificate binding client ``index`` to ``signer``'s public key."""
        return self.certify_key(index, SignatureScheme(signer.scheme), signer.public_key, kem_pk)

    def certify_key(
        self, index: int, scheme: SignatureScheme, public_key: bytes, kem_pk: bytes = b""
    ) -> bytes:
        """A certificate binding client ``index`` to ``public_key`` of ``scheme``."""
        self._serial += 1
        body = CertificateBody(
            authority=self.key.fingerprint,
            serial=self._serial,
            device_id=f"sim-{index}",
            client_index=index,
            scheme=scheme,
            identity_pk=public_key,
            kem_pk=kem_pk,
            issued_at=0.0,
        )
        return issue_certificate(self._signer, body)

    def warm(self, certificates: Mapping[int, bytes]) -> None:
        """Verify ``certificates`` now (as devices do once per epoch), so rounds hit the cache.

        Certificates that do not verify are skipped: they are refused when a client uses them.
        """
        for cert in certificates.values():
            try:
                self.cache.verify(cert, self.key)
            except IdentityError:
                continue

    def endorsed(
        self, keys: Mapping[int, bytes], scheme: SignatureScheme
    ) -> dict[int, EndorsedKey]:
        """CHRONOS directory entries certifying each keystore key directly (as a device key)."""
        return {
            u: EndorsedKey(certificate=self.certify_key(u, scheme, pk))
            for u, pk in sorted(keys.items())
        }

    def certify_all(self, signers: Mapping[int, Signer]) -> dict[int, bytes]:
        """Certificates of every signer, by client index."""
        return {u: self.certify(u, s) for u, s in sorted(signers.items())}

    def directory(
        self, certificates: Mapping[int, bytes], scheme: SignatureScheme
    ) -> IdentityDirectory:
        """A directory over ``certificates`` checked against this authority (shared cache)."""
        return IdentityDirectory(self.key, certificates, scheme=scheme, cache=self.cache)
