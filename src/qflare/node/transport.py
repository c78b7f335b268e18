"""HTTP transport of the node: one method per server endpoint, typed errors, TLS or loopback HTTP.

Every failure is one of :class:`NetworkError` (the server could not be reached or did not answer
in time) or a :class:`ServerError` subclass that keeps the HTTP status and the problem+json
``code`` (``token_used``, ``device_revoked``, ...). Nothing here retries: that is
:class:`qflare.node.session.NodeSession`'s job.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from qflare.ledger.merkle import ConsistencyProof
from qflare.ledger.wire import EntryPage, HeadReply
from qflare.protocol.session import ClientFinished, ClientHello, ServerHello
from qflare.protocol.wire import EnrollRequest, EnrollResponse, SealedFrame

__all__ = [
    "ConflictError",
    "ForbiddenError",
    "HttpApi",
    "MalformedResponseError",
    "NetworkError",
    "RateLimitedError",
    "ServerError",
    "ServerUnavailableError",
    "Timeouts",
    "TransportError",
    "UnauthorizedError",
    "check_server_url",
    "error_from_response",
]

MSGPACK = "application/msgpack"
T = TypeVar("T")


class TransportError(Exception):
    """Base of every error the node's transport raises."""


class NetworkError(TransportError):
    """The server could not be reached, or the connection failed or timed out."""


class MalformedResponseError(TransportError):
    """The server answered with a body that does not decode as expected."""


class ServerError(TransportError):
    """The server answered with an error status (RFC 9457 problem+json).

    Args:
        status: HTTP status code.
        code: The problem's machine-readable ``code`` (empty if the server gave none).
        detail: Human-readable explanation from the server.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code or 'error'}: {detail}")
        self.status, self.code, self.detail = status, code, detail


class UnauthorizedError(ServerError):
    """401: unknown token or device, unknown or expired session, bad signature."""


class ForbiddenError(ServerError):
    """403: revoked token or device."""


class ConflictError(ServerError):
    """409: used token, replayed sequence number, or a result for a step that is over."""


class RateLimitedError(ServerError):
    """429: too many requests."""


class ServerUnavailableError(ServerError):
    """5xx: the server failed or is overloaded; worth retrying later."""


_BY_STATUS: dict[int, type[ServerError]] = {
    401: UnauthorizedError,
    403: ForbiddenError,
    409: ConflictError,
    429: RateLimitedError,
}


def error_from_response(response: httpx.Response) -> ServerError:
    """Turn an error response (problem+json or anything else) into a typed exception."""
    code, detail = "", response.reason_phrase or "error"
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or "")
        detail = str(body.get("detail") or body.get("title") or detail)[:500]
    status = response.status_code
    kind = ServerUnavailableError if status >= 500 else _BY_STATUS.get(status, ServerError)
    return kind(status, code, detail)


@dataclass(frozen=True)
class Timeouts:
    """Request timeouts in seconds.

    Attributes:
        connect: Establishing the TCP (and TLS) connection.
        read: Waiting for a response (a long-poll adds its own wait on top).
        write: Sending a request body.
    """

    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0

    def httpx(self, extra_read: float = 0.0) -> httpx.Timeout:
        """The equivalent :class:`httpx.Timeout`."""
        return httpx.Timeout(
            connect=self.connect, read=self.read + extra_read, write=self.write, pool=self.connect
        )


def check_server_url(url: str, *, insecure: bool) -> str:
    """Validate a server base URL; plain ``http://`` only with ``insecure``.

    Returns:
        The URL without a trailing slash.

    Raises:
        ValueError: not an http(s) URL, or ``http://`` without ``insecure``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server URL must be https://HOST[:PORT], got {url!r}")
    if parts.scheme == "http" and not insecure:
        raise ValueError("refusing plain http:// without --insecure (use https:// and --ca)")
    return url.rstrip("/")


def _verify(ca: Path | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=str(ca)) if ca is not None else True


class HttpApi:
    """The server's API as seen by a node.

    Args:
        base_url: Server URL (``https://…``; ``http://…`` only with ``insecure``).
        ca: CA certificate (PEM) to verify the server with; system roots if ``None``.
        insecure: Allow plain HTTP (tests and loopback only).
        timeouts: Request timeouts.
        transport: An httpx transport to use instead of the network (tests).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca: Path | None = None,
        insecure: bool = False,
        timeouts: Timeouts | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = check_server_url(base_url, insecure=insecure)
        self.timeouts = timeouts or Timeouts()
        self._client = httpx.Client(
            base_url=self.base_url,
            verify=_verify(ca),
            timeout=self.timeouts.httpx(),
            transport=transport,
            headers={"Accept": f"{MSGPACK}, application/problem+json"},
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> HttpApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- endpoints ------------------------------------------------------------------------------

    def enroll(self, request: EnrollRequest) -> EnrollResponse:
        """``POST /v1/enroll``: trade a one-time token for a device id."""
        response = self._post("/v1/enroll", msgspec.msgpack.encode(request), expect=201)
        return _decode(response, EnrollResponse)

    def open_session(self, hello: ClientHello) -> ServerHello:
        """``POST /v1/sessions``: send the signed hello, get the server's signed KEM reply."""
        response = self._post("/v1/sessions", msgspec.msgpack.encode(hello), expect=201)
        return _decode(response, ServerHello)

    def confirm_session(self, finished: ClientFinished) -> None:
        """``POST /v1/sessions/{id}/confirm``: prove that we derived the session keys."""
        path = f"/v1/sessions/{finished.session_id}/confirm"
        self._post(path, msgspec.msgpack.encode(finished), expect=204)

    def poll(self, session_id: str, seq: int, auth: str, wait: float) -> SealedFrame | None:
        """``GET /v1/tasks``: long-poll; ``None`` when no task came before ``wait`` ended."""
        headers = {"X-QFLARE-Session": session_id, "X-QFLARE-Seq": str(seq), "X-QFLARE-Auth": auth}
        response = self._send(
            "GET",
            "/v1/tasks",
            params={"wait": f"{wait:g}"},
            headers=headers,
            timeout=self.timeouts.httpx(extra_read=wait),
        )
        if response.status_code == 204:
            return None
        _expect(response, 200)
        return _decode(response, SealedFrame)

    def post_result(self, frame: SealedFrame) -> None:
        """``POST /v1/results``: a sealed, signed protocol message (its session in a header too)."""
        session = {"X-QFLARE-Session": frame.session_id}
        self._post("/v1/results", msgspec.msgpack.encode(frame), expect=202, headers=session)

    def health(self) -> dict[str, Any]:
        """``GET /v1/health``."""
        response = self._send("GET", "/v1/health")
        _expect(response, 200)
        body = response.json()
        if not isinstance(body, dict):
            raise MalformedResponseError("health is not a JSON object")
        return body

    def ledger_head(self) -> HeadReply:
        """``GET /v1/ledger/head``: the latest cosigned head of the audit ledger."""
        return self._get("/v1/ledger/head", HeadReply)

    def ledger_consistency(self, first: int, second: int) -> ConsistencyProof:
        """``GET /v1/ledger/consistency``: proof that tree ``second`` extends tree ``first``."""
        params = {"first": first, "second": second}
        return self._get("/v1/ledger/consistency", ConsistencyProof, params)

    def ledger_entries(self, start: int, end: int) -> EntryPage:
        """``GET /v1/ledger/entries``: canonical entry bytes ``[start, end)`` (one page)."""
        return self._get("/v1/ledger/entries", EntryPage, {"start": start, "end": end})

    # ---- plumbing -------------------------------------------------------------------------------

    def _get(self, path: str, kind: type[T], params: dict[str, int] | None = None) -> T:
        response = self._send("GET", path, params=params)
        _expect(response, 200)
        return _decode(response, kind)

    def _post(
        self, path: str, body: bytes, *, expect: int, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        headers = {"Content-Type": MSGPACK, **(headers or {})}
        response = self._send("POST", path, content=body, headers=headers)
        _expect(response, expect)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise NetworkError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise error_from_response(response)


def _decode(response: httpx.Response, kind: type[T]) -> T:
    try:
        return msgspec.msgpack.decode(response.content, type=kind)
    except msgspec.MsgspecError as exc:
        raise MalformedResponseError(f"expected a msgpack {kind.__name__}: {exc}") from exc
