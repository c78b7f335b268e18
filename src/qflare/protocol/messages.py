"""Typed protocol messages (frozen ``msgspec.Struct``) and their canonical msgpack codec.

Every message carries ``version``, ``round_id`` and the sender or recipient; vectors travel as raw
little-endian bytes so an upload is ``4·d`` bytes plus a few dozen bytes of framing.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec

PROTOCOL_VERSION: Final = 1


class Message(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    """Base of every protocol message."""

    version: int = PROTOCOL_VERSION
    round_id: int


class RoundConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Public parameters of one secure-aggregation round, known to every participant.

    Attributes:
        session: Federation / session identifier (bound into every key and signature).
        round_id: Round number; never reused by a client.
        participants: Sorted ids of the sampled clients (ids are non-negative).
        k: Shares per client = size of its closed neighbourhood (``k >= n`` means complete graph).
        t: Shamir threshold.
        dim: Length of the ring vector each client uploads.
        modulus_bits: 32 or 64.
        signature_scheme: Identity signature scheme name.

    A sparse graph's permutation seed is not here: the participants draw it together (commit,
    then reveal; :mod:`qflare.protocol.seed`), so the server cannot choose it.
    """

    version: int = PROTOCOL_VERSION
    session: str
    round_id: int
    participants: tuple[int, ...]
    k: int
    t: int
    dim: int
    modulus_bits: int = 32
    signature_scheme: str = "mldsa65"

    @property
    def sparse(self) -> bool:
        """Whether the round uses a sparse graph (``k < n``), whose seed the clients draw."""
        return self.k < len(self.participants)


# ---- client -> server -------------------------------------------------------------------------


class AdvertiseKeys(Message, frozen=True, tag="advertise_keys"):
    """R0: the client's two fresh public keys and its graph-seed commitment, signed."""

    sender: int
    enc_pk: bytes
    mask_pk: bytes
    signature: bytes
    seed_commit: bytes = b""


class SeedReveal(Message, frozen=True, tag="seed_reveal"):
    """R0 (sparse graphs): the bytes behind the seed commitment, and a commitment for a restart."""

    sender: int
    attempt: int
    reveal: bytes
    next_commit: bytes


class EncryptedShares(Message, frozen=True, tag="encrypted_shares"):
    """R1: one AEAD ciphertext of (self-mask share, key share) per neighbour, and commitments.

    ``commitments[h]`` is ``H(self-mask share, salt) || H(key share, salt)`` of holder ``h``'s
    shares (ourselves included), so a share released in R4 can be checked; ``self_mask_commit``
    commits to the self-mask secret, so its reconstruction can be checked.
    """

    sender: int
    ciphertexts: dict[int, bytes]
    commitments: dict[int, bytes]
    self_mask_commit: bytes


class MaskedInput(Message, frozen=True, tag="masked_input"):
    """R2: the masked ring vector (raw little-endian bytes).

    ``missing`` names the neighbours whose shares for us failed to decrypt or did not match
    their commitments: we hold none of their shares (we still mask with them).
    """

    sender: int
    vector: bytes
    missing: tuple[int, ...] = ()


class ConsistencySignature(Message, frozen=True, tag="consistency_signature"):
    """R3: the client's signature over the survivor set it was shown."""

    sender: int
    signature: bytes


class UnmaskShares(Message, frozen=True, tag="unmask_shares"):
    """R4: self-mask shares of survivors and key shares of dropped clients, by owner id.

    Each value is the 33-byte share followed by its 16-byte commitment salt.
    """

    sender: int
    self_mask_shares: dict[int, bytes]
    key_shares: dict[int, bytes]


# ---- server -> client -------------------------------------------------------------------------


class SeedCommitments(Message, frozen=True, tag="seed_commitments"):
    """Reply to R0 (sparse graphs): every member's seed commitment for ``attempt``."""

    recipient: int
    attempt: int
    commitments: dict[int, bytes]


class KeyDirectory(Message, frozen=True, tag="key_directory"):
    """The advertised keys of the recipient's neighbours (and its own), and the seed reveals."""

    recipient: int
    entries: tuple[AdvertiseKeys, ...]
    reveals: dict[int, bytes] = {}


class ShareRelay(Message, frozen=True, tag="share_relay"):
    """Reply to R1: ciphertexts addressed to the recipient and their senders' commitments.

    A sender appears only if the recipient also shared with it (the relation stays symmetric).
    """

    recipient: int
    ciphertexts: dict[int, bytes]
    commitments: dict[int, bytes]


class ConsistencyRequest(Message, frozen=True, tag="consistency_request"):
    """Reply to R2: the survivor set U3 (clients whose masked input arrived)."""

    recipient: int
    survivors: tuple[int, ...]


class UnmaskRequest(Message, frozen=True, tag="unmask_request"):
    """Reply to R3: U3 again, the clients the server says dropped, and the R3 signatures over U3."""

    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: dict[int, bytes]


class SharePayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Plaintext inside an R1 ciphertext."""

    version: int = PROTOCOL_VERSION
    sender: int
    recipient: int
    self_mask_share: bytes
    key_share: bytes
    salt: bytes


ClientMessage = (
    AdvertiseKeys | SeedReveal | EncryptedShares | MaskedInput | ConsistencySignature | UnmaskShares
)
ServerMessage = SeedCommitments | KeyDirectory | ShareRelay | ConsistencyRequest | UnmaskRequest
AnyMessage = ClientMessage | ServerMessage

# Integer-keyed maps are built in ascending key order by both machines, and signed transcripts are
# tuples of scalars, so the default encoder's output is canonical for everything we sign.
_ENCODER = msgspec.msgpack.Encoder()
_CLIENT_DECODER: msgspec.msgpack.Decoder[ClientMessage] = msgspec.msgpack.Decoder(ClientMessage)
_SERVER_DECODER: msgspec.msgpack.Decoder[ServerMessage] = msgspec.msgpack.Decoder(ServerMessage)


def encode(obj: msgspec.Struct | tuple[Any, ...]) -> bytes:
    """Canonical msgpack encoding of a message or a transcript tuple."""
    return _ENCODER.encode(obj)


def decode_client(data: bytes) -> ClientMessage:
    """Decode a client->server message.

    Raises:
        msgspec.MsgspecError: malformed input or an unknown message type.
    """
    return _CLIENT_DECODER.decode(data)


def decode_server(data: bytes) -> ServerMessage:
    """Decode a server->client message.

    Raises:
        msgspec.MsgspecError: malformed input or an unknown message type.
    """
    return _SERVER_DECODER.decode(data)


T = TypeVar("T")


def decode_as(data: bytes, kind: type[T]) -> T:
    """Decode ``data`` as exactly ``kind``."""
    return msgspec.msgpack.decode(data, type=kind)
