"""CHRONOS messages (frozen ``msgspec.Struct``) and their canonical msgpack codec.

An *epoch* is set up once, offline, with three client messages (keys, encrypted shares, a ready
acknowledgement). Each *round* of the epoch then costs one client message (the masked input),
plus one more (unmask shares) in ``chronos-dm`` or, in ``chronos``, when a client dropped.
"""

from __future__ import annotations

import enum
from typing import Final

import msgspec

from qflare.protocol.messages import encode as encode  # one canonical codec for both families

PROTOCOL_VERSION: Final = 1


class Mode(enum.StrEnum):
    """The two CHRONOS variants."""

    CHRONOS = "chronos"
    """As published: one online message; a lying server can unmask a client it calls dropped."""
    CHRONOS_DM = "chronos-dm"
    """Double masking: per-round self masks and keys; one more online message."""


class EpochConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Public parameters of one CHRONOS epoch, known to every participant.

    Attributes:
        session: Federation / session identifier (bound into every key and signature).
        epoch: Epoch number.
        mode: ``chronos`` or ``chronos-dm``.
        participants: Sorted ids of the sampled clients (non-negative).
        k: Closed-neighbourhood size of the neighbour graph (``k >= n``: complete graph).
        t: Shamir threshold.
        dim: Length of the ring vector each client uploads.
        modulus_bits: 32 or 64.
        signature_scheme: Identity signature scheme name.
        first_round: First round id of the epoch (round ids are the enclave counter's values).
        rounds: Number of rounds in the epoch.

    A sparse graph's seed is drawn by the participants (commit, then reveal), not set here.
    """

    version: int = PROTOCOL_VERSION
    session: str
    epoch: int
    mode: Mode = Mode.CHRONOS
    participants: tuple[int, ...]
    k: int
    t: int
    dim: int
    modulus_bits: int = 32
    signature_scheme: str = "mldsa65"
    first_round: int
    rounds: int

    @property
    def sparse(self) -> bool:
        """Whether the epoch uses a sparse graph (``k < n``), whose seed the clients draw."""
        return self.k < len(self.participants)

    @property
    def share_count(self) -> int:
        """Shares a holder keeps per owner: one per mask key, plus one per round (``-dm``)."""
        return self.key_count + (self.rounds if self.double_masking else 0)

    @property
    def double_masking(self) -> bool:
        """Whether this epoch uses per-round self masks (``chronos-dm``)."""
        return self.mode is Mode.CHRONOS_DM

    @property
    def round_ids(self) -> range:
        """The round ids of this epoch."""
        return range(self.first_round, self.first_round + self.rounds)

    @property
    def key_count(self) -> int:
        """Mask key pairs per client: one per epoch (``chronos``) or one per round (``-dm``)."""
        return self.rounds if self.double_masking else 1

    def key_index(self, round_id: int) -> int:
        """Which of a client's mask keys masks ``round_id``."""
        return round_id - self.first_round if self.double_masking else 0


class Message(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    """Base of every CHRONOS message."""

    version: int = PROTOCOL_VERSION
    epoch: int


# ---- client -> server -------------------------------------------------------------------------


class EpochKeys(Message, frozen=True, tag="chronos_epoch_keys"):
    """O0: the enclave's fresh public keys and graph-seed commitment, signed inside it."""

    sender: int
    enc_pk: bytes
    mask_pks: tuple[bytes, ...]
    signature: bytes
    seed_commit: bytes = b""


class EpochSeedReveal(Message, frozen=True, tag="chronos_seed_reveal"):
    """O0 (sparse graphs): the bytes behind the seed commitment, and one for a restart."""

    sender: int
    attempt: int
    reveal: bytes
    next_commit: bytes


class EpochShares(Message, frozen=True, tag="chronos_epoch_shares"):
    """O1: one enclave-to-enclave AEAD ciphertext of Shamir shares per neighbour, and commitments.

    ``commitments[h]`` concatenates the 32-byte commitments of every share holder ``h`` keeps
    (key shares, then self-mask shares); ``self_mask_commits`` commit to the per-round self-mask
    secrets (``chronos-dm``), so their reconstructions can be checked.
    """

    sender: int
    ciphertexts: dict[int, bytes]
    commitments: dict[int, bytes]
    self_mask_commits: tuple[bytes, ...] = ()


class EpochReady(Message, frozen=True, tag="chronos_epoch_ready"):
    """O2: the epoch's mask partners, and those whose shares we could not keep.

    ``missing`` names partners whose shares failed to decrypt or to match their commitments.
    """

    sender: int
    partners: tuple[int, ...]
    missing: tuple[int, ...] = ()


class MaskedInput(Message, frozen=True, tag="chronos_masked_input"):
    """Online: the masked ring vector of one round (raw little-endian bytes)."""

    round_id: int
    sender: int
    vector: bytes


class UnmaskShares(Message, frozen=True, tag="chronos_unmask_shares"):
    """Online: self-mask shares of survivors and key shares of dropped clients, by owner id.

    Each value is the 33-byte share followed by its 16-byte commitment salt.
    """

    round_id: int
    sender: int
    self_mask_shares: dict[int, bytes]
    key_shares: dict[int, bytes]


# ---- server -> client -------------------------------------------------------------------------


class SeedCommitments(Message, frozen=True, tag="chronos_seed_commitments"):
    """Reply to O0 (sparse graphs): every member's seed commitment for ``attempt``."""

    recipient: int
    attempt: int
    commitments: dict[int, bytes]


class KeyDirectory(Message, frozen=True, tag="chronos_key_directory"):
    """The signed keys of the recipient's closed neighbourhood, and the seed reveals."""

    recipient: int
    entries: tuple[EpochKeys, ...]
    reveals: dict[int, bytes] = {}


class ShareRelay(Message, frozen=True, tag="chronos_share_relay"):
    """Reply to O1: ciphertexts addressed to the recipient, and their senders' commitments.

    Only senders the recipient also shared with appear; they are its mask partners.
    """

    recipient: int
    ciphertexts: dict[int, bytes]
    commitments: dict[int, bytes]


class RoundStart(Message, frozen=True, tag="chronos_round_start"):
    """Online: round ``round_id`` starts; ``excluded`` lists clients out until the next epoch."""

    round_id: int
    recipient: int
    excluded: tuple[int, ...] = ()


class UnmaskRequest(Message, frozen=True, tag="chronos_unmask_request"):
    """Online: whose masked inputs arrived (``survivors``) and whose masks must go (``dropped``)."""

    round_id: int
    recipient: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class SharePayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Plaintext inside an O1 ciphertext: the sender's shares held by the recipient.

    Attributes:
        key_shares: One share per mask key (index = key index).
        self_mask_shares: One share per round of the epoch (``chronos-dm`` only).
    """

    version: int = PROTOCOL_VERSION
    epoch: int
    sender: int
    recipient: int
    key_shares: tuple[bytes, ...]
    self_mask_shares: tuple[bytes, ...]
    salt: bytes


ClientMessage = EpochKeys | EpochSeedReveal | EpochShares | EpochReady | MaskedInput | UnmaskShares
ServerMessage = SeedCommitments | KeyDirectory | ShareRelay | RoundStart | UnmaskRequest

_CLIENT_DECODER: msgspec.msgpack.Decoder[ClientMessage] = msgspec.msgpack.Decoder(ClientMessage)
_SERVER_DECODER: msgspec.msgpack.Decoder[ServerMessage] = msgspec.msgpack.Decoder(ServerMessage)


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


def decode_payload(data: bytes) -> SharePayload:
    """Decode the plaintext of a share ciphertext.

    Raises:
        msgspec.MsgspecError: malformed input.
    """
    return msgspec.msgpack.decode(data, type=SharePayload)
