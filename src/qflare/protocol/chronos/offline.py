"""The offline phase's secret operations, as functions the keystore core calls.

Checking the key directory, verifying signatures, the epoch's Diffie-Hellman agreements,
splitting secrets and sealing / opening the enclave-to-enclave share ciphertexts. Every check
raises :class:`~qflare.protocol.errors.RemoteProtocolError` naming the state and the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import msgspec

from qflare.crypto import (
    Aead,
    CryptoError,
    Rng,
    SecretBytes,
    Shamir,
    SignatureScheme,
    X25519KeyPair,
    verify_signature,
)
from qflare.crypto.shamir import SHARE_BYTES
from qflare.protocol.chronos import keys
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.states import State
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.graph import neighbourhoods


def refuse(why: str, state: State, reason: AbortReason, client: int) -> NoReturn:
    """Raise the :class:`RemoteProtocolError` of a refused server message."""
    raise RemoteProtocolError(why, state=state.value, client=client, reason=reason)


def check_directory(
    cfg: m.EpochConfig, me: int, own: m.EpochKeys, directory: m.KeyDirectory
) -> dict[int, m.EpochKeys]:
    """Return the directory by sender after checking it is a set of our neighbours' keys.

    Raises:
        RemoteProtocolError: strangers, duplicates, our own keys replaced, or too few entries.
    """
    state, incons = State.O1_SHARE_KEYS, AbortReason.INCONSISTENT_VIEW
    peers = {e.sender: e for e in directory.entries}
    closed = neighbourhoods(cfg.participants, cfg.k, cfg.graph_seed)[me] | {me}
    mine = peers.get(me)
    if len(peers) != len(directory.entries) or not set(peers) <= closed:
        refuse("directory is not a set of our neighbours", state, incons, me)
    if mine is None or (mine.enc_pk, mine.mask_pks) != (own.enc_pk, own.mask_pks):
        refuse("server replaced our own public keys", state, incons, me)
    if len(peers) < cfg.t:
        refuse(f"only {len(peers)} neighbours advertised", state, AbortReason.TOO_FEW_CLIENTS, me)
    pks = [pk for e in peers.values() for pk in (e.enc_pk, *e.mask_pks)]
    if len(set(pks)) != len(pks) or any(len(e.mask_pks) != cfg.key_count for e in peers.values()):
        refuse("duplicate or missing public keys", state, incons, me)
    return peers


def verify_advertisements(
    cfg: m.EpochConfig,
    identities: Mapping[int, bytes],
    entries: Sequence[m.EpochKeys],
    *,
    state: State = State.O1_SHARE_KEYS,
) -> None:
    """Every advertisement must be signed by its sender's enrolled identity key.

    Raises:
        RemoteProtocolError: ``BAD_SIGNATURE`` naming the sender of a forged entry.
    """
    scheme = SignatureScheme(cfg.signature_scheme)
    for entry in entries:
        try:
            verify_signature(
                scheme,
                identities.get(entry.sender, b""),
                entry.signature,
                keys.advertise_transcript_of(cfg, entry),
                context=keys.ADVERTISE_CONTEXT,
            )
        except CryptoError:
            reason = AbortReason.BAD_SIGNATURE
            refuse("advertised keys are badly signed", state, reason, entry.sender)


@dataclass
class Pairwise:
    """The epoch's symmetric keys with each neighbour, derived once, offline."""

    send: dict[int, SecretBytes] = field(default_factory=dict)
    recv: dict[int, SecretBytes] = field(default_factory=dict)
    pairs: dict[int, list[SecretBytes]] = field(default_factory=dict)


def derive_pairwise(
    cfg: m.EpochConfig,
    me: int,
    enc: X25519KeyPair,
    mask_keys: Sequence[X25519KeyPair],
    peers: Mapping[int, m.EpochKeys],
) -> Pairwise:
    """All the epoch's agreements: share-encryption keys and one pairwise key per mask key.

    Raises:
        RemoteProtocolError: a neighbour's public key is invalid (small-order point).
    """
    out = Pairwise()
    for v, entry in peers.items():
        if v == me:
            continue
        try:
            out.send[v], out.recv[v] = keys.share_keys(cfg, enc, entry.enc_pk, me, v)
            out.pairs[v] = [
                keys.pair_key(cfg, own, pk, me, v, i)
                for i, (own, pk) in enumerate(zip(mask_keys, entry.mask_pks, strict=True))
            ]
        except CryptoError:
            reason = AbortReason.MALFORMED_MESSAGE
            refuse("a neighbour's public key is invalid", State.O1_SHARE_KEYS, reason, v)
    return out


def split_shares(
    cfg: m.EpochConfig,
    me: int,
    holders: Sequence[int],
    mask_keys: Sequence[X25519KeyPair],
    self_secrets: Sequence[SecretBytes],
    rng: Rng,
) -> dict[int, m.SharePayload]:
    """Shamir-share every mask private key and self-mask secret among ``holders``."""
    shamir, xs = Shamir(cfg.t), [keys.holder_x(v) for v in holders]
    key_split = [shamir.split(k.private_bytes(), xs, rng) for k in mask_keys]
    self_split = [shamir.split(s, xs, rng) for s in self_secrets]
    return {
        v: m.SharePayload(
            epoch=cfg.epoch,
            sender=me,
            recipient=v,
            key_shares=tuple(sp[x] for sp in key_split),
            self_mask_shares=tuple(sp[x] for sp in self_split),
        )
        for v, x in zip(holders, xs, strict=True)
    }


def seal_shares(
    cfg: m.EpochConfig,
    me: int,
    payloads: Mapping[int, m.SharePayload],
    send: Mapping[int, SecretBytes],
) -> dict[int, bytes]:
    """Encrypt each neighbour's payload under our share key with it (self excluded)."""
    return {
        v: Aead(send[v]).seal(m.encode(p), aad=keys.share_aad(cfg, me, v), sequence=0)
        for v, p in sorted(payloads.items())
        if v != me
    }


def open_shares(
    cfg: m.EpochConfig, me: int, sender: int, ciphertext: bytes, key: SecretBytes
) -> m.SharePayload:
    """Decrypt and check one neighbour's share payload.

    Raises:
        RemoteProtocolError: ``BAD_CIPHERTEXT`` naming the sender.
    """
    state, bad = State.O2_CONFIRM, AbortReason.BAD_CIPHERTEXT
    try:
        raw = Aead(key).open(ciphertext, aad=keys.share_aad(cfg, sender, me), sequence=0)
        payload = m.decode_payload(raw)
    except (CryptoError, msgspec.MsgspecError, ValueError):
        refuse("share ciphertext fails authentication", state, bad, sender)
    counts = (len(payload.key_shares), len(payload.self_mask_shares))
    expected = (cfg.key_count, cfg.rounds if cfg.double_masking else 0)
    shares = (*payload.key_shares, *payload.self_mask_shares)
    named = (payload.sender, payload.recipient, payload.epoch) == (sender, me, cfg.epoch)
    if not named or counts != expected or any(len(s) != SHARE_BYTES for s in shares):
        refuse("share payload names wrong parties or shapes", state, bad, sender)
    return payload
