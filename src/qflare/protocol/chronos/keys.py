"""Key-derivation labels and signed transcripts of CHRONOS (one place, client and server).

Pairwise masks: ``pair key = HKDF(DH(sk_u, pk_v), "chronos/pair", epoch, {u,v}, key index)`` is
derived once per epoch (offline); the seed of round ``r`` is ``HKDF(pair key, "chronos/pair-mask",
r, {u,v}, epoch)``, so every round's mask is fresh and the server can regenerate a dropped client's
masks from its reconstructed private key.
"""

from __future__ import annotations

from qflare.crypto import Label, SecretBytes, X25519KeyPair, hkdf, x25519_agree, x25519_agree_many
from qflare.protocol.chronos.messages import EpochConfig, EpochKeys, encode
from qflare.protocol.secagg.keys import holder_x, pair_sign

__all__ = [
    "ADVERTISE_CONTEXT",
    "MASK_SEED_BYTES",
    "SECRET_BYTES",
    "advertise_transcript",
    "advertise_transcript_of",
    "holder_x",
    "pair_key",
    "pair_sign",
    "round_seed",
    "self_mask_seed",
    "share_aad",
    "share_keys",
]

ADVERTISE_CONTEXT = b"qflare/chronos/v1/advertise"
MASK_SEED_BYTES = 16  # AES-128-CTR mask streams
SECRET_BYTES = 32


def _epoch_bytes(cfg: EpochConfig) -> bytes:
    return cfg.epoch.to_bytes(8, "big")


def advertise_transcript(
    cfg: EpochConfig, sender: int, enc_pk: bytes, mask_pks: tuple[bytes, ...]
) -> bytes:
    """Bytes signed in O0: the whole epoch configuration, the sender and its public keys."""
    return encode(("chronos/advertise", cfg, sender, enc_pk, mask_pks))


def advertise_transcript_of(cfg: EpochConfig, msg: EpochKeys) -> bytes:
    """:func:`advertise_transcript` of a received advertisement."""
    return advertise_transcript(cfg, msg.sender, msg.enc_pk, msg.mask_pks)


def share_aad(cfg: EpochConfig, sender: int, recipient: int) -> bytes:
    """Associated data of an O1 share ciphertext."""
    return encode(("chronos/shares", cfg.session, cfg.epoch, sender, recipient))


def share_keys(
    cfg: EpochConfig, own: X25519KeyPair, peer_pk: bytes, me: int, peer: int
) -> tuple[SecretBytes, SecretBytes]:
    """Both directional share-encryption keys with ``peer``: (``me->peer``, ``peer->me``)."""
    labels = (
        Label("chronos/share-enc", cfg.session, cfg.epoch, (me, peer)),
        Label("chronos/share-enc", cfg.session, cfg.epoch, (peer, me)),
    )
    out, inp = x25519_agree_many(own, peer_pk, labels)
    return out, inp


def pair_key(
    cfg: EpochConfig,
    own: X25519KeyPair | SecretBytes,
    peer_pk: bytes,
    u: int,
    v: int,
    key_index: int,
) -> SecretBytes:
    """32-byte pairwise key of ``{u, v}`` for mask key ``key_index`` (one DH, offline)."""
    label = Label(
        "chronos/pair",
        cfg.session,
        cfg.epoch,
        (min(u, v), max(u, v)),
        extra=key_index.to_bytes(4, "big"),
    )
    return x25519_agree(own, peer_pk, label, SECRET_BYTES)


def round_seed(cfg: EpochConfig, key: SecretBytes, u: int, v: int, round_id: int) -> SecretBytes:
    """128-bit seed of the pairwise mask of ``{u, v}`` in round ``round_id``."""
    label = Label(
        "chronos/pair-mask", cfg.session, round_id, (min(u, v), max(u, v)), _epoch_bytes(cfg)
    )
    return hkdf(key, label, MASK_SEED_BYTES)


def self_mask_seed(cfg: EpochConfig, secret: SecretBytes, round_id: int) -> SecretBytes:
    """128-bit seed of a client's self mask in ``round_id`` (``chronos-dm``)."""
    label = Label("chronos/self-mask", cfg.session, round_id, extra=_epoch_bytes(cfg))
    return hkdf(secret, label, MASK_SEED_BYTES)
