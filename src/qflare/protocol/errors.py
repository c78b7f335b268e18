"""Protocol errors in the h11 style: local misuse vs. remote misbehaviour."""

from __future__ import annotations

import enum


class AbortReason(enum.StrEnum):
    """Why a protocol machine moved to ``ABORTED``."""

    TOO_FEW_CLIENTS = "too_few_clients"
    UNEXPECTED_MESSAGE = "unexpected_message"
    BAD_SIGNATURE = "bad_signature"
    BAD_CIPHERTEXT = "bad_ciphertext"
    INCONSISTENT_VIEW = "inconsistent_view"
    INVARIANT_VIOLATED = "invariant_violated"
    MALFORMED_MESSAGE = "malformed_message"
    RECONSTRUCTION_FAILED = "reconstruction_failed"
    ROUND_REUSED = "round_reused"
    BAD_CERTIFICATE = "bad_certificate"
    PARAMS_REFUSED = "params_refused"
    SEED_WITHHELD = "seed_withheld"
    BAD_SHARE = "bad_share"
    BAD_KEY = "bad_key"


class ProtocolError(Exception):
    """Base class: carries the machine state, the offending client and an HTTP status hint.

    Args:
        message: Human-readable explanation (never contains secrets).
        state: Name of the state the machine was in.
        client: Id of the client that misbehaved or is concerned, if any.
        reason: Abort reason category.
        http_status: Status code an HTTP layer should answer with.
    """

    default_status = 400

    def __init__(
        self,
        message: str,
        *,
        state: str,
        client: int | None = None,
        reason: AbortReason = AbortReason.UNEXPECTED_MESSAGE,
        http_status: int | None = None,
    ) -> None:
        who = f" client={client}" if client is not None else ""
        super().__init__(f"[{state}{who}] {message}")
        self.state = state
        self.client = client
        self.reason = reason
        self.http_status = http_status or self.default_status


class LocalProtocolError(ProtocolError):
    """Our own caller misused the API (wrong order, missing input)."""

    default_status = 500


class RemoteProtocolError(ProtocolError):
    """The peer misbehaved: unexpected, malformed, forged or inconsistent message."""

    default_status = 400
