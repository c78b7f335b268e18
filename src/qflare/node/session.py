"""The node's session with the server: handshake, sealed polls and results, reconnection.

:class:`NodeSession` keeps one established :class:`~qflare.protocol.session.SecureChannel` and
hides its life cycle from the runner: it opens a session on first use and renews it before it
expires; when the server forgets it (401 after a restart or an expiry) it runs a new handshake;
after network errors, 5xx, 429 or a frame that fails authentication it retries with bounded
exponential backoff and jitter. Errors that no retry can fix (a revoked or unknown device)
surface at once as :class:`NodeFatalError`.

Backoff serves the round, not the other way round: the delay never exceeds a quarter of the
step timeout the server announces in its tasks, and it starts over from the first delay when the
server answers again after being unreachable (a restarted server is back: waiting on the old,
grown delay would cost the node the step).
"""

from __future__ import annotations

import base64
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import msgspec

from qflare.crypto import Rng, SignatureScheme, Signer
from qflare.node.state import DeviceRecord
from qflare.node.transport import (
    ConflictError,
    ForbiddenError,
    HttpApi,
    MalformedResponseError,
    NetworkError,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    TransportError,
    UnauthorizedError,
)
from qflare.protocol.errors import ProtocolError
from qflare.protocol.session import C2S, S2C, SecureChannel, SessionInitiator
from qflare.protocol.wire import SealedFrame, SignedResult, Task, decode_as

__all__ = [
    "NodeFatalError",
    "NodeSession",
    "NodeStopped",
    "RetryPolicy",
    "SessionLostError",
    "TaskTransport",
]

log = logging.getLogger("qflare.node.session")
T = TypeVar("T")
RENEW_MARGIN_S = 30.0
# Longest backoff as a share of the step timeout tasks announce: several retries fit in a step.
BACKOFF_SHARE = 0.25
_FATAL_CODES = frozenset({"device_unknown", "device_revoked", "wrong_device"})


class NodeFatalError(TransportError):
    """The server refuses this device for good (unknown or revoked): re-enroll or stop."""


class NodeStopped(Exception):  # noqa: N818 - a request, not an error
    """A stop was requested while the session waited to retry."""


class SessionLostError(TransportError):
    """The channel is unusable (bad or replayed frame); a new handshake is needed."""


class TaskTransport(Protocol):
    """What the runner needs from a transport: pull the next task, push a signed result."""

    def poll(self, wait: float) -> Task | None:
        """The next task, or ``None`` if none arrived within ``wait`` seconds."""
        ...

    def send(self, result: SignedResult) -> None:
        """Deliver a signed result."""
        ...


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    Attempt ``i`` (from 0) waits ``min(max_delay_s, initial_s · factor^i)`` scaled down by a
    random fraction of at most ``jitter``, so nodes that lost the server together do not
    reconnect in lockstep.

    Attributes:
        initial_s: First delay.
        factor: Growth per attempt.
        max_delay_s: Upper bound of any delay.
        jitter: Fraction of the delay that is randomised, in ``[0, 1]``.
        max_attempts: Failures tolerated per operation before the error is raised
            (``None``: retry forever).
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0
    jitter: float = 0.5
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.factor < 1 or self.max_delay_s < self.initial_s:
            raise ValueError("need 0 <= initial_s <= max_delay_s and factor >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must lie in [0, 1]")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")

    def delay(self, attempt: int, unit: float) -> float:
        """Delay before retry number ``attempt``; ``unit`` is a uniform draw from ``[0, 1)``."""
        base = min(self.max_delay_s, self.initial_s * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * unit)

    def exhausted(self, failures: int) -> bool:
        """Whether ``failures`` consecutive failures use up the budget."""
        return self.max_attempts is not None and failures >= self.max_attempts


class NodeSession:
    """A self-healing session of one enrolled device (implements :class:`TaskTransport`).

    Args:
        api: The HTTP transport.
        device: The enrollment record (device id, pinned server key).
        signer: The device's identity key (signs the hello and every result).
        rng: Randomness for the handshake (ephemeral KEM key, nonce).
        clock: Wall-clock time (the server checks hello timestamps).
        sleep: Blocking sleep used between retries (a stop event's ``wait`` in the CLI).
        policy: Backoff policy.
        jitter: Uniform ``[0, 1)`` draws for the backoff jitter.
        stop_event: When set, waiting retries give up with :class:`NodeStopped`.
    """

    def __init__(
        self,
        api: HttpApi,
        device: DeviceRecord,
        signer: Signer,
        *,
        rng: Rng,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        policy: RetryPolicy | None = None,
        jitter: Callable[[], float] | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        self._api, self._device, self._signer = api, device, signer
        self._rng, self._clock, self._sleep = rng, clock, sleep
        self.policy = policy or RetryPolicy()
        self._jitter = jitter or random.SystemRandom().random
        self._stop = stop_event or threading.Event()
        self._channel: SecureChannel | None = None
        self.handshakes = 0
        self.backoff_cap_s = self.policy.max_delay_s  # lowered by the step timeout tasks announce

    # ---- TaskTransport --------------------------------------------------------------------------

    def poll(self, wait: float) -> Task | None:
        """Long-poll for the next task (one sealed, replay-proof poll per attempt)."""
        return self._with_retry("poll", lambda channel: self._poll_once(channel, wait))

    def send(self, result: SignedResult) -> None:
        """Seal and post a signed result; each attempt uses a fresh sequence number.

        Raises:
            ConflictError: the server refused the result as stale (its step or round is over).
            ServerError: the server rejected the message itself (4xx other than 401/429).
        """
        payload = msgspec.msgpack.encode(result)
        self._with_retry("send", lambda channel: self._send_once(channel, payload))

    def send_once(self, result: SignedResult) -> bool:
        """Deliver ``result`` with one attempt (and a handshake if needed); ``True`` if it went.

        For a farewell: a node that stops does not wait for a server that does not answer.
        """
        payload = msgspec.msgpack.encode(result)
        try:
            self._send_once(self._ensure(), payload)
        except (TransportError, ProtocolError):
            return False
        return True

    def close(self) -> None:
        """Forget the channel and close the HTTP client."""
        self._channel = None
        self._api.close()

    # ---- one attempt ----------------------------------------------------------------------------

    def _poll_once(self, channel: SecureChannel, wait: float) -> Task | None:
        seq, tag = channel.seal(b"", now=self._clock(), direction=C2S)
        auth = base64.b64encode(tag).decode()
        frame = self._api.poll(channel.session_id, seq, auth, wait)
        if frame is None:
            return None
        plain = self._open(channel, frame)
        try:
            task = decode_as(plain, Task)
        except msgspec.MsgspecError as exc:
            raise MalformedResponseError(f"task does not decode: {exc}") from exc
        if task.step_timeout_s > 0:
            cap = max(self.policy.initial_s, task.step_timeout_s * BACKOFF_SHARE)
            self.backoff_cap_s = min(self.policy.max_delay_s, cap)
        return task

    def _send_once(self, channel: SecureChannel, payload: bytes) -> None:
        seq, ct = channel.seal(payload, now=self._clock(), direction=C2S)
        self._api.post_result(SealedFrame(session_id=channel.session_id, seq=seq, ciphertext=ct))

    def _open(self, channel: SecureChannel, frame: SealedFrame) -> bytes:
        if frame.session_id != channel.session_id:
            raise SessionLostError("frame of another session")
        try:
            return channel.open(frame.seq, frame.ciphertext, now=self._clock(), direction=S2C)
        except ProtocolError as exc:
            raise SessionLostError(f"server frame refused: {exc}") from exc

    # ---- session life cycle ---------------------------------------------------------------------

    def _ensure(self) -> SecureChannel:
        channel = self._channel
        if channel is None or self._clock() >= channel.expires_at - RENEW_MARGIN_S:
            channel = self._channel = self._handshake()
        return channel

    def _handshake(self) -> SecureChannel:
        device = self._device
        initiator = SessionInitiator(
            device.device_id,
            self._signer,
            device.server_public_key,
            self._rng,
            scheme=SignatureScheme(device.server_scheme),
        )
        try:
            reply = self._api.open_session(initiator.hello(now=self._clock()))
            finished, channel = initiator.finish(reply, now=self._clock())
            self._api.confirm_session(finished)
        except ServerError as exc:
            if exc.code in _FATAL_CODES or isinstance(exc, ForbiddenError):
                raise NodeFatalError(f"the server refuses this device: {exc}") from exc
            if type(exc) is ServerError or isinstance(exc, ConflictError):
                raise SessionLostError(f"handshake refused: {exc}") from exc
            raise
        except ProtocolError as exc:  # not signed by the pinned key: an impostor or a new server
            raise SessionLostError(f"handshake failed: {exc}") from exc
        self.handshakes += 1
        log.info(
            "session established",
            extra={"device": device.device_id, "expires_at": channel.expires_at},
        )
        return channel

    # ---- retries --------------------------------------------------------------------------------

    def _with_retry(self, what: str, op: Callable[[SecureChannel], T]) -> T:
        failures = 0  # this operation's failures (the attempt budget)
        streak = 0  # failures since the server last came back: the backoff exponent
        unreachable = False
        while True:
            handshakes = self.handshakes
            try:
                return op(self._ensure())
            except (UnauthorizedError, SessionLostError) as exc:
                if isinstance(exc, UnauthorizedError) and exc.code in _FATAL_CODES:
                    raise NodeFatalError(str(exc)) from exc
                self._channel = None  # the server forgot the session, or it is broken
                error: TransportError = exc
            except ConflictError as exc:
                if what == "send":
                    raise
                self._channel = None  # a replayed poll sequence: the channel is out of step
                error = exc
            except (
                NetworkError,
                ServerUnavailableError,
                RateLimitedError,
                MalformedResponseError,
            ) as exc:
                error = exc
            except ForbiddenError as exc:
                raise NodeFatalError(str(exc)) from exc
            answered = not isinstance(error, NetworkError) or self.handshakes > handshakes
            if answered and unreachable:
                streak = 0  # the server is back: start the backoff over
                log.info("server reachable again", extra={"what": what})
            unreachable = not answered
            failures += 1
            lost = isinstance(error, (UnauthorizedError, SessionLostError))
            self._backoff(what, failures, error, immediate=lost and streak == 0, streak=streak)
            streak += 1

    def _backoff(
        self, what: str, failures: int, error: TransportError, *, immediate: bool, streak: int
    ) -> None:
        if self.policy.exhausted(failures):
            raise error
        if self._stop.is_set():
            raise NodeStopped(f"stopped while retrying {what}") from error
        delay = 0.0 if immediate else self._delay(streak)
        log.warning(
            "%s failed; retrying",
            what,
            extra={"error": type(error).__name__, "attempt": failures, "delay_s": round(delay, 3)},
        )
        if delay > 0:
            self._sleep(delay)

    def _delay(self, streak: int) -> float:
        """The policy's delay for retry ``streak``, kept under the announced step timeout."""
        return min(self.backoff_cap_s, self.policy.delay(streak, self._jitter()))
