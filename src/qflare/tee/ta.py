"""How a trusted application (TA) is declared, registered and called.

A TA has two halves, like an OP-TEE TA and its client header:

* a :class:`TaManifest` (public): name, version, the module that implements it and its
  :class:`Command` table (command id, parameter type, result type). Both the host and the
  enclave import it; the host needs the types to encode parameters and decode results.
* a ``build(ctx: TaContext) -> CommandTable`` function in ``manifest.module``. It runs only
  inside the enclave process, receives the enclave services through :class:`TaContext`, and
  registers one handler per command. Handler state (keys, seeds) lives in that process.

Example::

    PING = Command(1, "ping", Ping, Pong)
    MANIFEST = TaManifest(name="example.ping", version=1, module=__name__, commands=(PING,))

    def build(ctx: TaContext) -> CommandTable:
        table = CommandTable(MANIFEST)
        table.register(PING, lambda p: Pong(echo=p.data))
        return table

The host then calls ``call(enclave, PING, Ping(data=b"x"))`` and gets a typed ``Pong``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from qflare.crypto import Rng, SecretBytes
from qflare.tee.errors import EnclaveError, UnknownCommand
from qflare.tee.interface import Enclave

P = TypeVar("P", bound=msgspec.Struct)
R = TypeVar("R", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Command(Generic[P, R]):
    """One TA command: its id on the wire and the types of its parameters and result.

    Attributes:
        id: Command id (``TEEC_InvokeCommand``'s ``commandID``); unique within the TA.
        name: Short name for logs and errors.
        params: ``msgspec.Struct`` type of the parameters.
        result: ``msgspec.Struct`` type of the result.
    """

    id: int
    name: str
    params: type[P]
    result: type[R]


@dataclass(frozen=True, slots=True)
class TaManifest:
    """Public description of a trusted application (the part the host may import).

    Attributes:
        name: Unique TA name (plays the role of the OP-TEE TA UUID); no ``/``.
        version: TA version; part of the measurement.
        module: Importable module defining ``build(ctx) -> CommandTable``.
        commands: The TA's commands.
        measured_modules: Further modules or packages whose source is part of the measurement
            (``module``, the enclave runtime and ``qflare.crypto`` always are).
    """

    name: str
    version: int
    module: str
    commands: tuple[Command[Any, Any], ...]
    measured_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError("TA name must be non-empty and contain no '/'")
        ids = [c.id for c in self.commands]
        if len(set(ids)) != len(ids):
            raise ValueError(f"TA {self.name} declares a command id twice")

    def command(self, command_id: int) -> Command[Any, Any]:
        """Return the command with ``command_id``.

        Raises:
            UnknownCommand: no such command in this manifest.
        """
        for command in self.commands:
            if command.id == command_id:
                return command
        raise UnknownCommand(f"TA {self.name} has no command {command_id}")


class TaContext(Protocol):
    """Services the enclave gives a TA (the GlobalPlatform Internal Core API, in miniature).

    Blobs sealed here belong to the TA: the host's :meth:`Enclave.unseal` refuses them.
    """

    @property
    def rng(self) -> Rng:
        """The enclave's CSPRNG."""
        ...

    @property
    def measurement(self) -> bytes:
        """This TA's measurement."""
        ...

    @property
    def config(self) -> bytes:
        """The TA configuration bytes the enclave was started with (measured)."""
        ...

    def seal(self, data: bytes | SecretBytes, *, label: str) -> bytes:
        """Seal TA-private ``data``; each call invalidates earlier blobs of ``label``."""
        ...

    def unseal(self, blob: bytes, *, label: str) -> SecretBytes:
        """Open the latest TA blob of ``label`` (raises like :meth:`Enclave.unseal`)."""
        ...

    def counter_read(self, name: str) -> int:
        """Current value of a named monotonic counter (shared with the host's view)."""
        ...

    def counter_advance(self, name: str, to_value: int) -> int:
        """Advance a named monotonic counter; raises ``CounterReuse`` if not increasing."""
        ...


_Handler = Callable[[Any], msgspec.Struct]


class CommandTable:
    """The handlers one TA registers inside the enclave, keyed by command id.

    Args:
        manifest: The TA's manifest; every registered command must belong to it.
    """

    def __init__(self, manifest: TaManifest) -> None:
        self.manifest = manifest
        self._handlers: dict[int, tuple[Command[Any, Any], _Handler]] = {}
        self._held_keys: Callable[[], Iterable[bytes]] = tuple

    def vouch_for(self, held_keys: Callable[[], Iterable[bytes]]) -> None:
        """Name the public keys whose private halves this TA holds.

        Evidence binds only these keys: the runtime refuses ``report_data`` whose key half is
        not the digest of one of them, so a compromised host cannot get the TA's measurement
        vouching for a key the host made itself. A TA that registers nothing can attest no key.
        """
        self._held_keys = held_keys

    def held_keys(self) -> tuple[bytes, ...]:
        """The public keys the TA currently vouches for."""
        return tuple(self._held_keys())

    def register(self, command: Command[P, R], handler: Callable[[P], R]) -> None:
        """Register ``handler`` for ``command`` (once per command)."""
        if self.manifest.command(command.id) != command:
            raise ValueError(f"command {command.name} is not the manifest's command {command.id}")
        if command.id in self._handlers:
            raise ValueError(f"command {command.name} registered twice")
        self._handlers[command.id] = (command, handler)

    def check_complete(self) -> None:
        """Raise if a command of the manifest has no handler."""
        missing = [c.name for c in self.manifest.commands if c.id not in self._handlers]
        if missing:
            raise EnclaveError(f"TA {self.manifest.name} lacks handlers for {missing}")

    def dispatch(self, command_id: int, params: bytes) -> bytes:
        """Decode ``params``, run the handler, encode its result.

        Raises:
            UnknownCommand: no handler for ``command_id``.
            EnclaveError: malformed parameters, or a result of the wrong type.
        """
        try:
            command, handler = self._handlers[command_id]
        except KeyError:
            raise UnknownCommand(f"TA {self.manifest.name} has no command {command_id}") from None
        try:
            decoded = msgspec.msgpack.decode(params, type=command.params)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise EnclaveError(f"malformed parameters for {command.name}: {exc}") from None
        result = handler(decoded)
        if not isinstance(result, command.result):
            raise EnclaveError(f"handler of {command.name} returned the wrong type")
        return msgspec.msgpack.encode(result)


def call(enclave: Enclave, command: Command[P, R], params: P) -> R:
    """Typed ``invoke``: run ``command`` with ``params`` and return its typed result.

    Raises:
        EnclaveError: the enclave answered with a result of the wrong type.
    """
    if not isinstance(params, command.params):
        raise TypeError(f"{command.name} takes {command.params.__name__}")
    result = enclave.invoke(command.id, params)
    if not isinstance(result, command.result):
        raise EnclaveError(f"{command.name} answered with {type(result).__name__}")
    return result
