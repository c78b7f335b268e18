"""The checked map from client index to identity key that the protocol machines read."""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Mapping

from qflare.crypto import SignatureScheme
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.identity.certificates import (
    AuthorityKey,
    CertificateBody,
    IdentityError,
    certificate_digest,
    verify_certificate,
)

__all__ = ["CertificateCache", "IdentityDirectory"]


class CertificateCache:
    """Certificates already verified, by digest (a node verifies each peer once, not per round).

    Args:
        limit: Entries kept (least recently used ones are forgotten first).
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._bodies: OrderedDict[tuple[bytes, bytes], CertificateBody] = OrderedDict()
        self.verified = 0  # signature checks done (for tests and benchmarks)

    def verify(self, data: bytes, authority: AuthorityKey) -> CertificateBody:
        """:func:`verify_certificate`, remembered per (authority, certificate).

        Raises:
            IdentityError: as :func:`verify_certificate`.
        """
        key = (authority.fingerprint, certificate_digest(data))
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
            return body
        body = verify_certificate(data, authority)
        self.verified += 1
        self._bodies[key] = body
        if len(self._bodies) > self._limit:
            self._bodies.popitem(last=False)
        return body


class IdentityDirectory:
    """Identity keys of a round's participants, each checked against the authority on first use.

    Args:
        authority: The pinned authority key.
        certificates: Client index -> encoded device certificate (from the server: untrusted).
        scheme: The identity scheme the round uses; a certificate of another scheme is refused.
        cache: Verified certificates shared across rounds.
    """

    def __init__(
        self,
        authority: AuthorityKey,
        certificates: Mapping[int, bytes],
        *,
        scheme: SignatureScheme,
        cache: CertificateCache | None = None,
    ) -> None:
        self._authority, self._certs, self._scheme = authority, dict(certificates), scheme
        self._cache = cache if cache is not None else CertificateCache()
        self._keys: dict[int, bytes] = {}

    def key_of(self, index: int, *, state: str) -> bytes:
        """The certified identity key of client ``index``.

        Raises:
            RemoteProtocolError: ``BAD_CERTIFICATE`` naming ``index``: no certificate, a forged
                one, one for another index or scheme.
        """
        key = self._keys.get(index)
        if key is not None:
            return key
        data = self._certs.get(index)
        why = "no certificate"
        if data is not None:
            try:
                body = self._cache.verify(data, self._authority)
            except IdentityError as exc:
                why = str(exc)
            else:
                if body.client_index == index and body.scheme is self._scheme:
                    self._keys[index] = body.identity_pk
                    return body.identity_pk
                why = f"certificate is for client {body.client_index} ({body.scheme.value})"
        raise RemoteProtocolError(
            f"peer identity refused: {why}",
            state=state,
            client=index,
            reason=AbortReason.BAD_CERTIFICATE,
        )

    def owns(self, index: int, identity_pk: bytes, *, state: str) -> None:
        """Check that the directory lists ``identity_pk`` for ``index`` (our own entry).

        Raises:
            RemoteProtocolError: the server lists another key for us.
        """
        try:
            listed = self.key_of(index, state=state)
        except RemoteProtocolError:
            listed = b""
        if not hmac.compare_digest(listed, identity_pk):
            raise RemoteProtocolError(
                "the round lists another identity for this client",
                state=state,
                client=index,
                reason=AbortReason.INCONSISTENT_VIEW,
            )
