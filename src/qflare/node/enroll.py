"""Enrollment: make the device's keys (once), trade a one-time token for a device id.

Only public keys leave the device. The server's identity key in the answer is pinned in
``device.json``; every later handshake must be signed by it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qflare.crypto import Rng, SignatureScheme
from qflare.node.state import DeviceRecord, NodeState, StateError
from qflare.node.transport import HttpApi
from qflare.protocol.wire import EnrollRequest

__all__ = ["AlreadyEnrolledError", "enroll"]

log = logging.getLogger("qflare.node")


class AlreadyEnrolledError(StateError):
    """The state directory already holds an enrolled device."""


def enroll(
    state_dir: Path,
    api: HttpApi,
    token: str,
    *,
    scheme: SignatureScheme,
    rng: Rng,
    ca_pem: bytes | None = None,
) -> DeviceRecord:
    """Enroll a node: create its keys in ``state_dir`` if needed and register them.

    A failed attempt keeps the keys, so it can be retried with another token.

    Args:
        state_dir: The node's state directory.
        api: Transport to the server.
        token: Single-use enrollment token from the operator.
        scheme: Identity signature scheme of the federation.
        rng: Randomness for the key seeds (the OS CSPRNG).
        ca_pem: CA certificate to keep for later runs (optional).

    Returns:
        The enrollment record that was stored.

    Raises:
        AlreadyEnrolledError: ``state_dir`` is already enrolled.
        qflare.node.transport.ServerError: the server refused the token or the keys (the
            exception's ``code`` says why: ``token_unknown``, ``token_used``, ...).
        qflare.node.transport.NetworkError: the server could not be reached.
    """
    state = NodeState.create(state_dir, scheme, rng)
    existing = state.device
    if existing is not None:
        raise AlreadyEnrolledError(
            f"{state_dir} is already enrolled as device {existing.device_id}"
        )
    request = EnrollRequest(
        token=token,
        identity_pk=state.signer().public_key,
        kem_pk=state.kem().public_key,
        scheme=scheme.value,
    )
    response = api.enroll(request)
    SignatureScheme(response.server_scheme)  # refuse a scheme we cannot verify
    record = DeviceRecord(
        device_id=response.device_id,
        server_url=api.base_url,
        server_public_key=response.server_public_key,
        server_scheme=response.server_scheme,
    )
    state.save_device(record)
    if ca_pem is not None:
        state.save_ca(ca_pem)
    log.info("enrolled", extra={"device": record.device_id, "server": record.server_url})
    return record
