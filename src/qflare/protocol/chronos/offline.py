"""The offline phase's secret operations, as functions the keystore core calls.

Checking the key directory, verifying signatures, the epoch's Diffie-Hellman agreements,
splitting secrets into committed shares and sealing / opening the enclave-to-enclave share
ciphertexts. A server message that contradicts itself or this client raises
:class:`~qflare.protocol.errors.RemoteProtocolError`; a *peer's* bad data (a forged or
uncertified advertisement, a small-order key, a share ciphertext that does not open or does not
match its commitments) only excludes that peer, with the reason recorded.
"""

from __future__ import annotations

import hmac
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
    x25519_public_is_valid,
)
from qflare.protocol.chronos import keys
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.states import State
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.identity import (
    AuthorityKey,
    EndorsedKey,
    IdentityError,
    verify_endorsed_key,
)
from qflare.protocol.shares import SALT_BYTES, is_share


def refuse(why: str, state: State, reason: AbortReason, client: int) -> NoReturn:
    """Raise the :class:`RemoteProtocolError` of a refused server message."""
    raise RemoteProtocolError(why, state=state.value, client=client, reason=reason)


def check_directory(
    cfg: m.EpochConfig,
    me: int,
    own: m.EpochKeys,
    directory: m.KeyDirectory,
    closed: frozenset[int],
) -> dict[int, m.EpochKeys]:
    """Return the directory by sender after checking it is a set of our neighbours' keys.

    Raises:
        RemoteProtocolError: strangers, duplicates, our own keys replaced, or too few entries.
    """
    state, incons = State.O1_SHARE_KEYS, AbortReason.INCONSISTENT_VIEW
    peers = {e.sender: e for e in directory.entries}
    mine = peers.get(me)
    if len(peers) != len(directory.entries) or not set(peers) <= closed:
        refuse("directory is not a set of our neighbours", state, incons, me)
    if mine is None or (mine.enc_pk, mine.mask_pks) != (own.enc_pk, own.mask_pks):
        refuse("server replaced our own public keys", state, incons, me)
    if len(peers) < cfg.t:
        refuse(f"only {len(peers)} neighbours advertised", state, AbortReason.TOO_FEW_CLIENTS, me)
    return peers


def advertisement_problem(
    cfg: m.EpochConfig, identities: Mapping[int, bytes], entry: m.EpochKeys
) -> str | None:
    """Why a peer's advertisement cannot be used (``None``: it can).

    It must carry valid, not small-order X25519 keys of the epoch's shape and be signed by the
    sender's certified identity (its keystore key).
    """
    pks = (entry.enc_pk, *entry.mask_pks)
    if len(entry.mask_pks) != cfg.key_count or not all(x25519_public_is_valid(pk) for pk in pks):
        return "invalid, small-order or missing public keys"
    identity = identities.get(entry.sender)
    if identity is None:
        return "no certified identity"
    try:
        verify_signature(
            SignatureScheme(cfg.signature_scheme),
            identity,
            entry.signature,
            keys.advertise_transcript_of(cfg, entry),
            context=keys.ADVERTISE_CONTEXT,
        )
    except CryptoError:
        return "advertised keys are badly signed"
    return None


def verify_advertisements(
    cfg: m.EpochConfig,
    identities: Mapping[int, bytes],
    entries: Sequence[m.EpochKeys],
    *,
    state: State = State.O1_SHARE_KEYS,
) -> None:
    """Every advertisement must be usable (the server's check on arrival).

    Raises:
        RemoteProtocolError: ``BAD_SIGNATURE`` (or ``BAD_KEY``) naming the sender.
    """
    for entry in entries:
        why = advertisement_problem(cfg, identities, entry)
        if why is not None:
            bad_key = why.startswith("invalid")
            reason = AbortReason.BAD_KEY if bad_key else AbortReason.BAD_SIGNATURE
            refuse(why, state, reason, entry.sender)


@dataclass
class Pairwise:
    """The epoch's symmetric keys with each neighbour, derived once, offline."""

    send: dict[int, SecretBytes] = field(default_factory=dict)
    recv: dict[int, SecretBytes] = field(default_factory=dict)
    pairs: dict[int, list[SecretBytes]] = field(default_factory=dict)
    rejected: dict[int, str] = field(default_factory=dict)


def derive_pairwise(
    cfg: m.EpochConfig,
    me: int,
    enc: X25519KeyPair,
    mask_keys: Sequence[X25519KeyPair],
    peers: Mapping[int, m.EpochKeys],
) -> Pairwise:
    """All the epoch's agreements: share-encryption keys and one pairwise key per mask key.

    A neighbour whose key yields no agreement is recorded in ``rejected`` and left out.
    """
    out = Pairwise()
    for v, entry in peers.items():
        if v == me:
            continue
        try:
            send, recv = keys.share_keys(cfg, enc, entry.enc_pk, me, v)
            pairs = [
                keys.pair_key(cfg, own, pk, me, v, i)
                for i, (own, pk) in enumerate(zip(mask_keys, entry.mask_pks, strict=True))
            ]
        except CryptoError:
            out.rejected[v] = "key agreement failed"
            continue
        out.send[v], out.recv[v], out.pairs[v] = send, recv, pairs
    return out


@dataclass(frozen=True)
class Dealt:
    """Shares of every mask key and self-mask secret, one payload per holder, and commitments."""

    payloads: dict[int, m.SharePayload]
    commitments: dict[int, bytes]
    self_mask_commits: tuple[bytes, ...]


def split_shares(
    cfg: m.EpochConfig,
    me: int,
    holders: Sequence[int],
    mask_keys: Sequence[X25519KeyPair],
    self_secrets: Sequence[SecretBytes],
    rng: Rng,
) -> Dealt:
    """Shamir-share every mask private key and self-mask secret among ``holders``, committed."""
    shamir, xs = Shamir(cfg.t), [keys.holder_x(v) for v in holders]
    key_split = [shamir.split(k.private_bytes(), xs, rng) for k in mask_keys]
    self_split = [shamir.split(s, xs, rng) for s in self_secrets]
    payloads: dict[int, m.SharePayload] = {}
    commitments: dict[int, bytes] = {}
    for v, x in zip(holders, xs, strict=True):
        payload = m.SharePayload(
            epoch=cfg.epoch,
            sender=me,
            recipient=v,
            key_shares=tuple(sp[x] for sp in key_split),
            self_mask_shares=tuple(sp[x] for sp in self_split),
            salt=rng.random_bytes(SALT_BYTES),
        )
        payloads[v] = payload
        commitments[v] = commitments_of(cfg, payload)
    commits = tuple(keys.self_mask_commitment(cfg, me, i, s) for i, s in enumerate(self_secrets))
    return Dealt(payloads, commitments, commits)


def commitments_of(cfg: m.EpochConfig, payload: m.SharePayload) -> bytes:
    """The commitments an owner publishes for one holder's payload."""
    all_shares = (*payload.key_shares, *payload.self_mask_shares)
    return keys.share_commitments(cfg, payload.sender, payload.recipient, all_shares, payload.salt)


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
    cfg: m.EpochConfig,
    me: int,
    sender: int,
    ciphertext: bytes,
    key: SecretBytes,
    commitment: bytes,
) -> m.SharePayload | str:
    """Decrypt and check one neighbour's share payload; the reason it is unusable otherwise."""
    try:
        raw = Aead(key).open(ciphertext, aad=keys.share_aad(cfg, sender, me), sequence=0)
        payload = m.decode_payload(raw)
    except (CryptoError, msgspec.MsgspecError, ValueError):
        return "share ciphertext fails authentication"
    counts = (len(payload.key_shares), len(payload.self_mask_shares))
    expected = (cfg.key_count, cfg.rounds if cfg.double_masking else 0)
    shares = (*payload.key_shares, *payload.self_mask_shares)
    named = (payload.sender, payload.recipient, payload.epoch) == (sender, me, cfg.epoch)
    if not named or counts != expected or not all(is_share(s) for s in shares):
        return "share payload names wrong parties or shapes"
    if len(payload.salt) != SALT_BYTES or not hmac.compare_digest(
        commitments_of(cfg, payload), commitment
    ):
        return "shares do not match their commitments"
    return payload


def verify_directory(
    cfg: m.EpochConfig,
    directory: Mapping[int, EndorsedKey],
    authority: AuthorityKey,
    me: int,
    own_key: bytes,
) -> tuple[dict[int, bytes], dict[int, str]]:
    """The participants' keystore keys that chain to ``authority``, and why the others do not.

    Raises:
        RemoteProtocolError: the directory lists another key for this keystore.
    """
    identities: dict[int, bytes] = {}
    rejected: dict[int, str] = {}
    for index in cfg.participants:
        entry = directory.get(index)
        try:
            if entry is None:
                raise IdentityError("no certificate")
            body, key = verify_endorsed_key(entry, authority, cfg.session, index)
            if body.scheme.value != cfg.signature_scheme:
                raise IdentityError(f"certificate is for {body.scheme.value} keys")
        except IdentityError as exc:
            rejected[index] = str(exc)
            continue
        identities[index] = key
    if identities.get(me) != own_key:
        refuse(
            "the directory lists another identity for this keystore",
            State.O0_ADVERTISE_KEYS,
            AbortReason.INCONSISTENT_VIEW,
            me,
        )
    return identities, rejected
