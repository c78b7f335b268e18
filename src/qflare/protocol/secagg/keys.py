"""Key-derivation labels and signed transcripts of the SecAgg protocol (one place, both sides)."""

from __future__ import annotations

from qflare.crypto import Label, SecretBytes, X25519KeyPair, hkdf, x25519_agree, x25519_agree_many
from qflare.protocol import shares
from qflare.protocol.messages import AdvertiseKeys, RoundConfig, encode

ADVERTISE_CONTEXT = b"qflare/secagg/v1/advertise"
CONSISTENCY_CONTEXT = b"qflare/secagg/v1/consistency"
MASK_SEED_BYTES = 16  # AES-128-CTR mask streams
SALT_BYTES = shares.SALT_BYTES
COMMITMENT_BYTES = shares.COMMITMENT_BYTES


def seed_scope(cfg: RoundConfig) -> str:
    """Scope of the round's graph-seed exchange."""
    return f"secagg/{cfg.session}/{cfg.round_id}"


def advertise_transcript(
    cfg: RoundConfig, sender: int, enc_pk: bytes, mask_pk: bytes, seed_commit: bytes = b""
) -> bytes:
    """Bytes signed in R0: binds both public keys and the seed commitment to the round and sender."""
    return encode((cfg.session, cfg.round_id, sender, enc_pk, mask_pk, seed_commit))


def advertise_transcript_of(cfg: RoundConfig, msg: AdvertiseKeys) -> bytes:
    """:func:`advertise_transcript` of a received message."""
    return advertise_transcript(cfg, msg.sender, msg.enc_pk, msg.mask_pk, msg.seed_commit)


def consistency_transcript(
    cfg: RoundConfig, survivors: tuple[int, ...], graph_seed: bytes = b""
) -> bytes:
    """Bytes signed in R3: the survivor set U3 and the graph this client used."""
    return encode((cfg.session, cfg.round_id, survivors, graph_seed))


def share_commitment(
    cfg: RoundConfig, owner: int, holder: int, kind: str, share: bytes, salt: bytes
) -> bytes:
    """Commitment to one share (``kind``: ``b`` or ``sk``) of ``owner`` held by ``holder``."""
    return shares.share_commitment(seed_scope(cfg), owner, holder, kind, share, salt)


def self_mask_commitment(cfg: RoundConfig, owner: int, b: SecretBytes) -> bytes:
    """Commitment to a client's self-mask secret (checks its reconstruction)."""
    return shares.secret_commitment(seed_scope(cfg), owner, "b", b)


def share_aad(cfg: RoundConfig, sender: int, recipient: int) -> bytes:
    """Associated data of an R1 share ciphertext."""
    return encode(("secagg/shares", cfg.session, cfg.round_id, sender, recipient))


def share_keys(
    cfg: RoundConfig, own: X25519KeyPair, peer_pk: bytes, me: int, peer: int
) -> tuple[SecretBytes, SecretBytes]:
    """Both directional share keys with ``peer`` from one agreement: (``me->peer``, ``peer->me``)."""
    labels = (
        Label("secagg/share-enc", cfg.session, cfg.round_id, (me, peer)),
        Label("secagg/share-enc", cfg.session, cfg.round_id, (peer, me)),
    )
    out, inp = x25519_agree_many(own, peer_pk, labels)
    return out, inp


def pair_label(cfg: RoundConfig, u: int, v: int) -> Label:
    """Label of the pairwise mask seed of the unordered pair {u, v}."""
    return Label("secagg/pair-mask", cfg.session, cfg.round_id, (min(u, v), max(u, v)))


def pair_seed(
    cfg: RoundConfig, own: X25519KeyPair | SecretBytes, peer_pk: bytes, u: int, v: int
) -> SecretBytes:
    """128-bit seed of the pairwise mask between ``u`` and ``v``."""
    return x25519_agree(own, peer_pk, pair_label(cfg, u, v), MASK_SEED_BYTES)


def self_mask_seed(cfg: RoundConfig, b: SecretBytes) -> SecretBytes:
    """128-bit seed of a client's self mask, derived from its shared 32-byte secret ``b``."""
    return hkdf(b, Label("secagg/self-mask", cfg.session, cfg.round_id), MASK_SEED_BYTES)


def pair_sign(u: int, v: int) -> int:
    """``+1`` if ``u`` adds the pairwise mask with ``v``, ``-1`` if it subtracts it."""
    return 1 if u < v else -1


def holder_x(client: int) -> int:
    """Shamir evaluation point of a client (ids start at 0, points at 1)."""
    return client + 1
