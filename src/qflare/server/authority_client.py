"""How the server reaches the enrollment authority, which holds the key the server does not.

The server relays :class:`~qflare.protocol.wire.EnrollRequest` as it came from the node and gets
an :class:`~qflare.protocol.wire.IssuedCertificate` back. Whatever travels on this link is public
(signed claims, an HMAC proof, public keys, a signed certificate), so it needs integrity only
through the signatures the server and the node check; use ``https://`` when the authority runs
on another host anyway. Tests inject any object with an ``issue`` method instead.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec

from qflare.protocol.identity import AuthorityKey, IdentityError, decode_authority_key
from qflare.protocol.wire import EnrollmentRefusedError, EnrollRequest, IssuedCertificate

__all__ = [
    "AuthorityClient",
    "AuthorityUnavailableError",
    "HttpAuthorityClient",
    "load_authority_key",
]

MSGPACK = "application/msgpack"


class AuthorityUnavailableError(Exception):
    """The authority could not be reached, timed out, failed, or answered nonsense."""


class AuthorityClient(Protocol):
    """Something that issues device certificates: the authority over HTTP, or one in-process."""

    def issue(self, request: EnrollRequest) -> IssuedCertificate:
        """Ask the authority for the certificate ``request`` asks for.

        Raises:
            qflare.protocol.wire.EnrollmentRefusedError: the authority refused (its status and code).
            AuthorityUnavailableError: no usable answer.
        """
        ...


def load_authority_key(path: Path) -> AuthorityKey:
    """Read the pinned ``authority.pub``.

    Raises:
        ValueError: missing, or not an encoded authority public key (e.g. the private key).
    """
    try:
        return decode_authority_key(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"authority_key {path} does not exist (copy authority.pub)") from None
    except IdentityError:
        raise ValueError(
            f"authority_key {path} is not an authority public key (give authority.pub, "
            "never authority.key)"
        ) from None


def _refusal(response: httpx.Response) -> EnrollmentRefusedError | None:
    """The authority's 4xx problem as a refusal (``None`` for anything else)."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not body.get("code"):
        return None
    detail = str(body.get("detail") or body.get("title") or "refused")[:500]
    return EnrollmentRefusedError(response.status_code, str(body["code"])[:64], detail)


class HttpAuthorityClient:
    """``POST {base_url}/v1/certificates`` with msgpack bodies.

    Args:
        base_url: The authority's URL (``http://`` or ``https://``).
        timeout_s: Connect and read timeout.
        ca: CA certificate (PEM) for ``https://``; the system roots if ``None``.
        transport: An httpx transport to use instead of the network (tests).

    Raises:
        ValueError: not an http(s) URL.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        ca: Path | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"authority_url must be http(s)://HOST[:PORT], got {base_url!r}")
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca)) if ca is not None else True
        )
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            verify=verify,
            transport=transport,
            headers={"Accept": f"{MSGPACK}, application/problem+json"},
        )

    def issue(self, request: EnrollRequest) -> IssuedCertificate:
        """Relay ``request``; see :meth:`AuthorityClient.issue`."""
        try:
            response = self._client.post(
                "/v1/certificates",
                content=msgspec.msgpack.encode(request),
                headers={"Content-Type": MSGPACK},
            )
        except httpx.HTTPError as exc:
            raise AuthorityUnavailableError(
                f"{type(exc).__name__} talking to the authority"
            ) from exc
        if response.status_code != 201:
            refusal = _refusal(response)
            if refusal is not None:
                raise refusal
            raise AuthorityUnavailableError(f"the authority answered HTTP {response.status_code}")
        try:
            return msgspec.msgpack.decode(response.content, type=IssuedCertificate)
        except msgspec.MsgspecError as exc:
            raise AuthorityUnavailableError("the authority's answer does not decode") from exc

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
