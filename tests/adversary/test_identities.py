"""Attack 2: a server that hands out identity keys.

Identity keys used to reach clients straight from the server, so a server could substitute keys it
made for a victim's peers, receive the victim's shares and recover its input. Peers' identities
now come as certificates of the enrollment authority, checked against the pinned authority key.
"""

from __future__ import annotations

import msgspec
import pytest

from qflare.crypto import DeterministicRng, Ed25519Signer, X25519KeyPair
from qflare.protocol import messages as m
from qflare.protocol.errors import AbortReason, RemoteProtocolError
from qflare.protocol.secagg import RoundRegistry, SecAggClient, State, keys
from qflare.sim.cohort import Cohort
from qflare.sim.identities import SimAuthority
from tests.adversary.helpers import Loot, exact
from tests.protocol.helpers import authority, certificates, config, inputs, signers

N, VICTIM = 7, 0
CFG = config(N, N, 4)


class KeySubstitution:
    """The server's own authority, keys and advertisements for every peer of the victim."""

    def __init__(self) -> None:
        rng = DeterministicRng(b"evil server")
        self.fake = SimAuthority(rng)
        self.signers = {u: Ed25519Signer.generate(rng) for u in range(1, N)}
        self.keys = {u: X25519KeyPair.generate(rng) for u in range(1, N)}
        self.certs = {VICTIM: certificates(N)[VICTIM], **self.fake.certify_all(self.signers)}

    def advert(self, u: int, seed_commit: bytes) -> m.AdvertiseKeys:
        pk = self.keys[u].public
        transcript = keys.advertise_transcript(CFG, u, pk, pk[::-1], seed_commit)
        return m.AdvertiseKeys(
            round_id=CFG.round_id,
            sender=u,
            enc_pk=pk,
            mask_pk=pk[::-1],
            signature=self.signers[u].sign(transcript, context=keys.ADVERTISE_CONTEXT),
            seed_commit=seed_commit,
        )

    def hook(self, u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if u == VICTIM and isinstance(msg, m.KeyDirectory):
            entries = tuple(
                e if e.sender == VICTIM else self.advert(e.sender, e.seed_commit)
                for e in msg.entries
            )
            return msgspec.structs.replace(msg, entries=entries)
        return msg


def test_server_substituted_peer_keys_receive_no_share_of_the_victim():
    evil, loot = KeySubstitution(), Loot()
    cohort = Cohort(
        CFG,
        seed=1,
        signers=signers(N),
        authority=authority(N),
        views={VICTIM: evil.certs},
        server_hook=evil.hook,
        client_hook=loot,
    )
    res = cohort.run(inputs(CFG.dim))
    victim = cohort.clients[VICTIM]
    assert set(victim.rejected) == set(range(1, N))
    assert all("another authority" in why for why in victim.rejected.values())
    err = res.client_errors[VICTIM]
    assert isinstance(err, RemoteProtocolError) and err.reason is AbortReason.TOO_FEW_CLIENTS
    assert VICTIM not in loot.shares  # not one share of the victim was encrypted to anyone
    assert res.server_state is State.COMPLETED and VICTIM not in res.survivors
    assert exact(res, CFG)  # the honest others still finish


def test_genuine_certificates_shuffled_between_indices_are_refused():
    genuine = certificates(N)
    shuffled = {u: genuine[(u % (N - 1)) + 1] if u else genuine[0] for u in range(N)}
    cohort = Cohort(CFG, seed=2, signers=signers(N), authority=authority(N), views={0: shuffled})
    res = cohort.run(inputs(CFG.dim))
    assert all("certificate is for client" in why for why in cohort.clients[0].rejected.values())
    assert res.client_errors[0].reason is AbortReason.TOO_FEW_CLIENTS
    assert exact(res, CFG)


def test_a_directory_that_lists_another_identity_for_us_is_refused():
    evil = KeySubstitution()
    certs = {**certificates(N), VICTIM: evil.fake.certify(VICTIM, evil.signers[1])}
    with pytest.raises(RemoteProtocolError) as info:
        SecAggClient(
            CFG,
            VICTIM,
            signers(N)[VICTIM],
            authority(N).directory(certs, signers(N)[0].scheme),
            DeterministicRng(3),
            RoundRegistry(),
        )
    assert info.value.reason is AbortReason.INCONSISTENT_VIEW


def test_one_forged_certificate_excludes_only_that_peer():
    evil = KeySubstitution()
    forged = {**certificates(N), 3: evil.certs[3]}
    views = {u: forged for u in range(N) if u != 3}  # client 3 itself is shown its real one
    cohort = Cohort(CFG, seed=4, signers=signers(N), authority=authority(N), views=views)
    res = cohort.run(inputs(CFG.dim))
    assert not res.client_errors
    assert all("another authority" in c.rejected[3] for u, c in cohort.clients.items() if u != 3)
    assert 3 not in res.survivors and exact(res, CFG)
