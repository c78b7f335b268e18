"""Key-derivation labels and signed transcripts of CHRONOS (one place, client and server).

Pairwise masks: ``pair key = HKDF(DH(sk_u, pk_v), "chronos/pair", epoch, {u,v}, key index)`` is
derived once per epoch (offline); the seed of round ``r`` is ``HKDF(pair key, "chronos/pair-mask",
r, {u,v}, epoch)``, so every round's mask is fresh and the server can regenerate a dropped client's
masks from its reconstructed private key.
"""

from __future__ import annotations

from qflare.crypto import Label, SecretBytes, X25519KeyPair, hkdf, x25519_agree, x25519_agree_many
from qflare.protocol import shares
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
    "scope",
    "self_mask_commitment",
    "self_mask_seed",
    "share_commitments",
    "share_aad",
    "share_keys",
]

ADVERTISE_CONTEXT = b"qflare/chronos/v1/advertise"
MASK_SEED_BYTES = 16  # AES-128-CTR mask streams
SECRET_BYTES = 32


def _epoch_bytes(cfg: EpochConfig) -> bytes:
    return cfg.epoch.to_bytes(8, "big")


def scope(cfg: EpochConfig) -> str:
    """Scope of the epoch's graph-seed exchange and share commitments."""
    return f"chronos/{cfg.session}/{cfg.epoch}"


def advertise_transcript(
    cfg: EpochConfig,
    sender: int,
    enc_pk: bytes,
    mask_pks: tuple[bytes, ...],
    seed_commit: bytes = b"",
) -> bytes:
    """Bytes signed in O0: the epoch configuration, the sender, its keys and seed commitment."""
    return encode(("chronos/advertise", cfg, sender, enc_pk, mask_pks, seed_commit))


def advertise_transcript_of(cfg: EpochConfig, msg: EpochKeys) -> bytes:
    """:func:`advertise_transcript` of a received advertisement."""
    return advertise_transcript(cfg, msg.sender, msg.enc_pk, msg.mask_pks, msg.seed_commit)


def share_kinds(cfg: EpochConfig) -> list[str]:
    """Kind names of the shares a holder keeps per owner, in payload order."""
    dm = cfg.rounds if cfg.double_masking else 0
    return [f"key{i}" for i in range(cfg.key_count)] + [f"self{i}" for i in range(dm)]


def share_commitments(
    cfg: EpochConfig, owner: int, holder: int, all_shares: tuple[bytes, ...], salt: bytes
) -> bytes:
    """The concatenated commitments of every share ``holder`` keeps for ``owner``."""
    return b"".join(
        shares.share_commitment(scope(cfg), owner, holder, kind, share, salt)
        for kind, share in zip(share_kinds(cfg), all_shares, strict=True)
    )


def self_mask_commitment(cfg: EpochConfig, owner: int, index: int, secret: SecretBytes) -> bytes:
    """Commitment to ``owner``'s self-mask secret of round index ``index`` (``chronos-dm``)."""
    return shares.secret_commitment(scope(cfg), owner, f"self{index}", secret)


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
