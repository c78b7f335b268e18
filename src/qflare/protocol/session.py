"""Sans-IO session handshake with forward secrecy, and the AEAD channel it yields.

Device (``SessionInitiator``) and server (``SessionResponder``) run a signed, KEM-based
key exchange:

1. ``ClientHello``: device id, nonce, a fresh *ephemeral* hybrid ML-KEM-768 + X25519 public key
   and the time, signed with the device's ML-DSA-65 identity key (registered at enrollment).
2. ``ServerHello``: session id, nonce, the KEM ciphertext to the ephemeral key, the expiry, signed
   with the server's ML-DSA-65 key (pinned by the device at enrollment) over the transcript.
3. ``ClientFinished``: an AEAD tag over the transcript hash under the new client-to-server key —
   proof that the device decapsulated.

Both sides then hold a :class:`SecureChannel`: AES-256-GCM per direction, sequence numbers as
nonces and associated data, strictly increasing on receipt (a replay is rejected), and an expiry.
Because the KEM key is ephemeral, a later compromise of either identity key reveals no past
session (forward secrecy). Time and randomness are injected; no I/O happens here.
"""

from __future__ import annotations

import enum
import hashlib

import msgspec

from qflare.crypto import (
    Aead,
    CryptoError,
    HybridKem,
    Label,
    Rng,
    SecretBytes,
    SignatureScheme,
    Signer,
    hkdf,
    verify_signature,
)
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.messages import PROTOCOL_VERSION, encode
from qflare.protocol.numbers import Finite

HELLO_CONTEXT = b"qflare/session/v1/client-hello"
SERVER_CONTEXT = b"qflare/session/v1/server-hello"
MAX_CLOCK_SKEW_S = 300.0


class HandshakeState(enum.Enum):
    """Handshake progress (same names on both sides)."""

    START = "START"
    SENT_HELLO = "SENT_HELLO"
    SENT_SERVER_HELLO = "SENT_SERVER_HELLO"
    ESTABLISHED = "ESTABLISHED"
    ABORTED = "ABORTED"


class ClientHello(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Device -> server: signed ephemeral KEM key."""

    version: int = PROTOCOL_VERSION
    device_id: str
    nonce: bytes
    kem_pk: bytes
    timestamp: Finite
    signature: bytes


class ServerHello(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Server -> device: encapsulation to the ephemeral key, signed by the server."""

    version: int = PROTOCOL_VERSION
    session_id: str
    nonce: bytes
    kem_ct: bytes
    expires_at: Finite
    signature: bytes


class ClientFinished(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Device -> server: key confirmation."""

    version: int = PROTOCOL_VERSION
    session_id: str
    confirm: bytes


def _hello_body(h: ClientHello) -> bytes:
    return encode((h.version, h.device_id, h.nonce, h.kem_pk, h.timestamp))


def _transcript(
    hello: ClientHello, session_id: str, nonce: bytes, kem_ct: bytes, expires_at: float
) -> bytes:
    body = encode((_hello_body(hello), hello.signature, session_id, nonce, kem_ct, expires_at))
    return hashlib.sha256(body).digest()


class SecureChannel:
    """An established session: seal outgoing payloads, open incoming ones.

    Args:
        session_id: Identifier bound into every frame's associated data.
        send_key: Key for our direction.
        recv_key: Key for the peer's direction.
        expires_at: Time after which the channel refuses to work.
    """

    def __init__(
        self, session_id: str, send_key: SecretBytes, recv_key: SecretBytes, expires_at: float
    ) -> None:
        self.session_id = session_id
        self.expires_at = expires_at
        self._send, self._recv = Aead(send_key), Aead(recv_key)
        self._send_seq = 1  # 0 is the handshake's key confirmation
        self._recv_seq = 0

    def _aad(self, seq: int, direction: bytes) -> bytes:
        return encode(("qflare/session/v1/frame", self.session_id, seq, direction))

    def _check_time(self, now: float, state: str) -> None:
        if not now < self.expires_at:  # NaN-safe: a NaN expiry is expired
            raise RemoteProtocolError(
                "session expired",
                state=state,
                reason=AbortReason.UNEXPECTED_MESSAGE,
                http_status=401,
            )

    def seal(self, payload: bytes, *, now: float, direction: bytes) -> tuple[int, bytes]:
        """Encrypt ``payload``; returns ``(sequence, ciphertext)`` to send together."""
        if not now < self.expires_at:
            raise LocalProtocolError("session expired", state="ESTABLISHED", http_status=401)
        seq = self._send_seq
        self._send_seq += 1
        return seq, self._send.seal(payload, aad=self._aad(seq, direction), sequence=seq)

    def open(self, seq: int, ciphertext: bytes, *, now: float, direction: bytes) -> bytes:
        """Decrypt a frame. Sequence numbers must strictly increase.

        Raises:
            RemoteProtocolError: expired session (401), replayed or reordered sequence (409),
                or a frame that fails authentication (400).
        """
        self._check_time(now, "ESTABLISHED")
        if seq <= self._recv_seq:
            raise RemoteProtocolError(
                f"sequence {seq} replayed (last {self._recv_seq})",
                state="ESTABLISHED",
                reason=AbortReason.UNEXPECTED_MESSAGE,
                http_status=409,
            )
        try:
            plain = self._recv.open(ciphertext, aad=self._aad(seq, direction), sequence=seq)
        except CryptoError as exc:
            raise RemoteProtocolError(
                "frame fails authentication", state="ESTABLISHED", reason=AbortReason.BAD_CIPHERTEXT
            ) from exc
        self._recv_seq = seq
        return plain


C2S, S2C = b"c2s", b"s2c"


def _derive(
    shared: SecretBytes, transcript: bytes, session_id: str
) -> tuple[SecretBytes, SecretBytes]:
    c2s = hkdf(shared, Label("session/c2s", session_id, extra=transcript))
    s2c = hkdf(shared, Label("session/s2c", session_id, extra=transcript))
    return c2s, s2c


class SessionInitiator:
    """The device's side of the handshake.

    Args:
        device_id: Id assigned at enrollment.
        signer: The device's identity key.
        server_public_key: The server's ML-DSA-65 key, pinned at enrollment.
        rng: Randomness for the nonce and the ephemeral KEM key.
        scheme: Signature scheme of both identity keys.
    """

    def __init__(
        self,
        device_id: str,
        signer: Signer,
        server_public_key: bytes,
        rng: Rng,
        scheme: SignatureScheme = SignatureScheme.MLDSA65,
    ) -> None:
        self.state = HandshakeState.START
        self._device_id, self._signer, self._server_pk = device_id, signer, server_public_key
        self._rng, self._scheme = rng, scheme
        self._kem: HybridKem | None = None
        self._hello: ClientHello | None = None

    def hello(self, *, now: float) -> ClientHello:
        """Make the signed ``ClientHello`` with a fresh ephemeral KEM key."""
        if self.state is not HandshakeState.START:
            raise LocalProtocolError("hello() called twice", state=self.state.value)
        self._kem = HybridKem.generate(self._rng)
        unsigned = ClientHello(
            device_id=self._device_id,
            nonce=self._rng.random_bytes(32),
            kem_pk=self._kem.public_key,
            timestamp=now,
            signature=b"",
        )
        sig = self._signer.sign(_hello_body(unsigned), context=HELLO_CONTEXT)
        self._hello = msgspec.structs.replace(unsigned, signature=sig)
        self.state = HandshakeState.SENT_HELLO
        return self._hello

    def finish(self, reply: ServerHello, *, now: float) -> tuple[ClientFinished, SecureChannel]:
        """Check the server's signature, decapsulate, and confirm the key.

        Raises:
            RemoteProtocolError: bad server signature, expired offer, or wrong state.
        """
        if self.state is not HandshakeState.SENT_HELLO or self._hello is None or self._kem is None:
            raise LocalProtocolError("finish() before hello()", state=self.state.value)
        transcript = _transcript(
            self._hello, reply.session_id, reply.nonce, reply.kem_ct, reply.expires_at
        )
        try:
            verify_signature(
                self._scheme, self._server_pk, reply.signature, transcript, context=SERVER_CONTEXT
            )
            shared = self._kem.decapsulate(reply.kem_ct)
        except CryptoError as exc:
            self.state = HandshakeState.ABORTED
            raise RemoteProtocolError(
                "server hello is not signed by the pinned server key",
                state="SENT_HELLO",
                reason=AbortReason.BAD_SIGNATURE,
                http_status=401,
            ) from exc
        if not reply.expires_at > now:  # NaN-safe
            self.state = HandshakeState.ABORTED
            raise RemoteProtocolError(
                "server offered an expired session", state="SENT_HELLO", http_status=401
            )
        c2s, s2c = _derive(shared, transcript, reply.session_id)
        confirm = Aead(c2s).seal(b"", aad=transcript, sequence=0)
        self.state = HandshakeState.ESTABLISHED
        return ClientFinished(session_id=reply.session_id, confirm=confirm), SecureChannel(
            reply.session_id, c2s, s2c, reply.expires_at
        )


class SessionResponder:
    """The server's side of one handshake.

    Args:
        signer: The server's identity key.
        rng: Randomness for the session id and nonce.
        lifetime_s: Session lifetime.
        scheme: Signature scheme of both identity keys.
    """

    def __init__(
        self,
        signer: Signer,
        rng: Rng,
        lifetime_s: float = 3600.0,
        scheme: SignatureScheme = SignatureScheme.MLDSA65,
    ) -> None:
        self.state = HandshakeState.START
        self._signer, self._rng, self._lifetime, self._scheme = signer, rng, lifetime_s, scheme
        self._pending: tuple[str, bytes, SecretBytes, float] | None = None
        self.device_id: str | None = None

    def respond(self, hello: ClientHello, device_public_key: bytes, *, now: float) -> ServerHello:
        """Verify the device's signed hello and encapsulate to its ephemeral key.

        Args:
            hello: The device's hello.
            device_public_key: The identity key registered for ``hello.device_id``.
            now: Current time.

        Raises:
            RemoteProtocolError: bad signature (401) or a timestamp outside the allowed skew (401).
        """
        if self.state is not HandshakeState.START:
            raise LocalProtocolError("respond() called twice", state=self.state.value)
        try:
            verify_signature(
                self._scheme,
                device_public_key,
                hello.signature,
                _hello_body(hello),
                context=HELLO_CONTEXT,
            )
        except CryptoError as exc:
            self.state = HandshakeState.ABORTED
            raise RemoteProtocolError(
                "client hello is badly signed",
                state="START",
                reason=AbortReason.BAD_SIGNATURE,
                http_status=401,
            ) from exc
        fresh = abs(now - hello.timestamp) <= MAX_CLOCK_SKEW_S  # False for NaN and infinities
        if not fresh or len(hello.nonce) != 32:
            self.state = HandshakeState.ABORTED
            raise RemoteProtocolError(
                "client hello is stale or malformed", state="START", http_status=401
            )
        try:
            shared, ct = HybridKem.encapsulate(hello.kem_pk, self._rng)
        except CryptoError as exc:
            self.state = HandshakeState.ABORTED
            raise RemoteProtocolError(
                "malformed KEM key", state="START", reason=AbortReason.MALFORMED_MESSAGE
            ) from exc
        session_id, nonce, expires = (
            self._rng.random_bytes(16).hex(),
            self._rng.random_bytes(32),
            now + self._lifetime,
        )
        transcript = _transcript(hello, session_id, nonce, ct, expires)
        sig = self._signer.sign(transcript, context=SERVER_CONTEXT)
        self._pending = (session_id, transcript, shared, expires)
        self.device_id = hello.device_id
        self.state = HandshakeState.SENT_SERVER_HELLO
        return ServerHello(
            session_id=session_id, nonce=nonce, kem_ct=ct, expires_at=expires, signature=sig
        )

    def confirm(self, finished: ClientFinished) -> SecureChannel:
        """Check the device's key confirmation and open the channel.

        Raises:
            RemoteProtocolError: wrong session or a confirmation that does not verify (401).
        """
        if self.state is not HandshakeState.SENT_SERVER_HELLO or self._pending is None:
            raise LocalProtocolError("confirm() before respond()", state=self.state.value)
        session_id, transcript, shared, expires = self._pending
        c2s, s2c = _derive(shared, transcript, session_id)
        try:
            if finished.session_id != session_id:
                raise CryptoError("wrong session")
            Aead(c2s).open(finished.confirm, aad=transcript, sequence=0)
        except CryptoError as exc:
            self.state = HandshakeState.ABORTED
            raise RemoteProtocolError(
                "key confirmation failed",
                state="SENT_SERVER_HELLO",
                reason=AbortReason.BAD_CIPHERTEXT,
                http_status=401,
            ) from exc
        self.state = HandshakeState.ESTABLISHED
        return SecureChannel(session_id, s2c, c2s, expires)
