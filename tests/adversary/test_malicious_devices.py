"""Attacks 5 and 6: one malicious device against its honest neighbours and the sum.

A device can send a small-order X25519 key, garbage share ciphertexts, malformed or wrong shares in
R4, or shares that are not on one polynomial. None of it may crash an honest client or yield a
COMPLETED round with a wrong sum: the device is excluded or named, and the round finishes with the
right sum whenever ``t`` good shares of every needed secret exist.
"""

from __future__ import annotations

import contextlib

import msgspec

from qflare.crypto import Shamir
from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason
from qflare.protocol.secagg import State, keys
from qflare.sim.cohort import Cohort
from tests.adversary.helpers import exact
from tests.protocol.helpers import authority, config, inputs, signers

N, BAD = 7, 4
CFG = config(N, N, 4)
SMALL_ORDER = bytes(32)  # u = 0: every agreement with it is all-zero


def _cohort(seed: int, **kwargs) -> Cohort:
    return Cohort(CFG, seed=seed, signers=signers(N), authority=authority(N), **kwargs)


def _small_order_advert(msg: m.AdvertiseKeys) -> m.AdvertiseKeys:
    """The device signs its own small-order key, so the signature is valid."""
    transcript = keys.advertise_transcript(CFG, BAD, SMALL_ORDER, msg.mask_pk, msg.seed_commit)
    sig = signers(N)[BAD].sign(transcript, context=keys.ADVERTISE_CONTEXT)
    return msgspec.structs.replace(msg, enc_pk=SMALL_ORDER, signature=sig)


def test_small_order_key_is_refused_by_the_server_at_r0():
    def send_bad(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.AdvertiseKeys) and msg.sender == BAD:
            return _small_order_advert(msg)
        return msg

    res = _cohort(1, client_hook=send_bad).run(inputs(CFG.dim))
    assert res.server_errors[0].client == BAD
    assert res.server_errors[0].reason is AbortReason.BAD_KEY
    assert not res.client_errors and BAD not in res.survivors and exact(res, CFG)


def test_small_order_key_relayed_by_a_lying_server_excludes_only_that_peer():
    bad_advert: dict[str, m.AdvertiseKeys] = {}

    def keep(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.AdvertiseKeys) and msg.sender == BAD:
            bad_advert["x"] = _small_order_advert(msg)
        return msg

    def relay(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.KeyDirectory) and u != BAD:
            entries = tuple(bad_advert["x"] if e.sender == BAD else e for e in msg.entries)
            return msgspec.structs.replace(msg, entries=entries)
        return msg

    cohort = _cohort(2, client_hook=keep, server_hook=relay)
    res = cohort.run(inputs(CFG.dim))
    assert not res.client_errors  # no honest client crashed or aborted
    for u, client in cohort.clients.items():
        if u != BAD:
            assert "small-order" in client.rejected[BAD]
    assert res.server_state is State.COMPLETED and BAD not in res.survivors and exact(res, CFG)


def _garble(holders: set[int]):
    def hook(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.EncryptedShares) and msg.sender == BAD:
            cts = {v: (bytes(len(ct)) if v in holders else ct) for v, ct in msg.ciphertexts.items()}
            return msgspec.structs.replace(msg, ciphertexts=cts)
        return msg

    return hook


def test_garbage_ciphertexts_to_some_neighbours_cost_nothing():
    cohort = _cohort(3, client_hook=_garble({0, 1}))
    res = cohort.run(inputs(CFG.dim))
    assert not res.client_errors
    assert "authentication" in cohort.clients[0].rejected[BAD]
    assert BAD in res.survivors and exact(res, CFG)  # 4 holders of 4's shares are enough


def test_garbage_ciphertexts_to_all_neighbours_abort_naming_the_device():
    res = _cohort(4, client_hook=_garble(set(range(N)))).run(inputs(CFG.dim))
    assert not res.client_errors  # honest clients keep running
    assert res.total is None and res.server_state is State.ABORTED
    err = res.server_errors[-1]
    assert err.reason is AbortReason.RECONSTRUCTION_FAILED and err.client == BAD


def _tamper_r4(holder: int, owner: int, how):
    def hook(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.UnmaskShares) and msg.sender == holder:
            shares = dict(msg.self_mask_shares)
            shares[owner] = how(shares[owner])
            return msgspec.structs.replace(msg, self_mask_shares=shares)
        return msg

    return hook


def test_a_malformed_r4_share_is_dropped_and_its_sender_named():
    cohort_res = _cohort(5, client_hook=_tamper_r4(2, 0, lambda s: s[:10]))
    res = cohort_res.run(inputs(CFG.dim))
    assert res.server_state is State.COMPLETED and exact(res, CFG)
    assert not res.server_errors


def test_a_wrong_self_mask_share_no_longer_gives_a_wrong_sum():
    """Before: a COMPLETED round with a wrong sum. Now the share fails its commitment."""

    def wrong(share: bytes) -> bytes:
        value = (int.from_bytes(share[:33], "big") + 1) % (2**256)
        return value.to_bytes(33, "big") + share[33:]

    cohort = _cohort(6, client_hook=_tamper_r4(0, 1, wrong))
    res = cohort.run(inputs(CFG.dim))
    assert res.server_state is State.COMPLETED and exact(res, CFG)


@contextlib.contextmanager
def _server_machines():
    """Keep a handle on every server machine made inside the block."""
    from qflare.protocol.secagg import SecAggServer

    seen: list[SecAggServer] = []
    original = SecAggServer.__init__

    def spy(self, *a, **k):
        original(self, *a, **k)
        seen.append(self)

    SecAggServer.__init__ = spy  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        SecAggServer.__init__ = original  # type: ignore[method-assign]


def test_culprits_are_named_in_the_servers_record():
    with _server_machines() as seen:
        flip = _tamper_r4(3, 1, lambda s: s[:10] + bytes([s[10] ^ 1]) + s[11:])
        res = _cohort(7, client_hook=flip).run(inputs(CFG.dim))
    assert exact(res, CFG)
    assert 3 in seen[0].culprits and "R4" in seen[0].culprits[3]


def test_an_owner_short_of_shares_is_not_branded_a_culprit():
    """Garbled ciphertexts could be the server's doing: the round aborts, nobody is quarantined."""
    with _server_machines() as seen:
        _cohort(4, client_hook=_garble(set(range(N)))).run(inputs(CFG.dim))
    assert BAD not in seen[0].culprits


class _Inconsistent(Shamir):
    """A malicious owner's dealer: shares that match their commitments but lie on no polynomial."""

    def split(self, secret, holders, rng):  # type: ignore[no-untyped-def]
        shares = super().split(secret, holders, rng)
        first = min(shares)
        shares[first] = ((int.from_bytes(shares[first], "big") + 1) % 2**256).to_bytes(33, "big")
        return shares


def test_an_owner_dealing_inconsistent_shares_never_yields_a_wrong_sum():
    def corrupt(u: int, client) -> None:  # type: ignore[no-untyped-def]
        if u == BAD:
            client._shamir = _Inconsistent(CFG.t)

    with _server_machines() as seen:
        res = _cohort(8, corrupt=corrupt).run(inputs(CFG.dim))
    assert not res.client_errors
    if res.server_state is State.COMPLETED:
        assert exact(res, CFG)
    else:
        err = res.server_errors[-1]
        assert err.reason is AbortReason.RECONSTRUCTION_FAILED and err.client == BAD
        assert "commitment" in seen[0].culprits[BAD]  # provably its fault: quarantined
