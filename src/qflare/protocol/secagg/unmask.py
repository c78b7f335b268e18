"""Final unmasking: reconstruct secrets from shares and strip the masks from the running sum."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qflare.crypto import MaskPrg, RingVector, SecretBytes, Shamir, ShamirError, X25519KeyPair
from qflare.protocol import messages as m
from qflare.protocol.secagg import keys


@dataclass(frozen=True, slots=True)
class UnmaskInputs:
    """Everything the unmask step needs from the server's collected state."""

    cfg: m.RoundConfig
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    responses: Mapping[int, m.UnmaskShares]
    adverts: Mapping[int, m.AdvertiseKeys]
    held: Mapping[int, frozenset[int]]


def _collect(inputs: UnmaskInputs, owner: int, *, self_mask: bool) -> dict[int, bytes]:
    shares: dict[int, bytes] = {}
    for holder, resp in inputs.responses.items():
        table = resp.self_mask_shares if self_mask else resp.key_shares
        share = table.get(owner)
        if share is not None:
            shares[keys.holder_x(holder)] = share
    return shares


def _recover_mask_key(inputs: UnmaskInputs, shamir: Shamir, owner: int) -> SecretBytes:
    sk = shamir.combine(_collect(inputs, owner, self_mask=False))
    if X25519KeyPair(sk).public != inputs.adverts[owner].mask_pk:
        raise ShamirError(f"reconstructed key of client {owner} does not match its advertised key")
    return sk


def remove_masks(acc: RingVector, inputs: UnmaskInputs) -> None:
    """Subtract survivors' self masks and dropped clients' pairwise masks from ``acc`` in place.

    Raises:
        ShamirError: a secret has fewer than ``t`` shares or reconstructs inconsistently.
    """
    cfg = inputs.cfg
    shamir = Shamir(cfg.t)
    prg = MaskPrg(cfg.dim, cfg.modulus_bits)
    for u in inputs.survivors:
        b = shamir.combine(_collect(inputs, u, self_mask=True))
        prg.sub_into(acc, keys.self_mask_seed(cfg, b))
    alive = set(inputs.survivors)
    for d in inputs.dropped:
        sk = _recover_mask_key(inputs, shamir, d)
        for v in sorted(alive):
            if d not in inputs.held.get(v, frozenset()):
                continue
            seed = keys.pair_seed(cfg, sk, inputs.adverts[v].mask_pk, v, d)
            prg.apply(acc, seed, -keys.pair_sign(v, d))
