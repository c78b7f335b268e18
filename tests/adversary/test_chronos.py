"""The same attacks against CHRONOS: parameters, identities and a compromised device OS.

In CHRONOS the secrets live behind a keystore (in a simulated enclave on real devices), and the
keystore is the party that checks: the epoch parameters against the client policy, every peer's
identity against the enrollment authority's key, and -- inside the enclave -- everything the host
OS hands it, including whether it may be provisioned again.
"""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from qflare.crypto import DeterministicRng, Ed25519Signer, SignatureScheme
from qflare.protocol.chronos import Mode
from qflare.protocol.chronos import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.protocol.identity import EndorsedKey, endorse_key
from qflare.sim.chronos_cohort import ChronosCohort
from qflare.sim.identities import SimAuthority
from qflare.tee import TrustedAppError
from qflare.tee.chronos_host import EnclaveKeystore
from tests.chronos.helpers import config, directory, exact, inputs, keystores

SCHEME = SignatureScheme.ED25519
EVIL = SimAuthority(DeterministicRng(b"evil authority"))


@pytest.mark.parametrize("mode", list(Mode))
def test_keystores_refuse_a_minority_threshold(mode):
    cfg = config(6, 6, 3, mode=mode)  # 2t = 6 <= n: two disjoint groups of t holders exist
    stores = keystores(cfg)
    with pytest.raises(LocalProtocolError) as info:
        stores[0].begin_epoch(cfg, directory(stores))
    assert info.value.reason is AbortReason.PARAMS_REFUSED


def test_server_substituted_identities_are_left_out_by_the_keystore():
    cfg = config(5, 5, 3, mode=Mode.CHRONOS_DM)
    stores = keystores(cfg, 1)
    genuine = directory(stores)
    fakes = {u: Ed25519Signer.generate(DeterministicRng(u)) for u in range(1, 5)}
    forged = {0: genuine[0], **EVIL.endorsed({u: s.public_key for u, s in fakes.items()}, SCHEME)}
    co = ChronosCohort(cfg, stores, views={0: forged})
    log = co.run_offline()
    assert log.client_errors[0].reason is AbortReason.TOO_FEW_CLIENTS  # no usable peer left
    assert all("another authority" in why for why in stores[0].rejected.values())
    assert 0 not in co.server.roster
    rlog = co.run_round(1, inputs(cfg.dim))
    assert rlog.result is not None and exact(rlog.result.total, rlog.result.survivors, cfg)


def test_an_endorsement_chain_is_followed_and_a_forged_link_refused():
    """Authority -> device certificate -> device's endorsement of its enclave key."""
    device = Ed25519Signer.generate(DeterministicRng(b"device"))
    cert = SimAuthority.default().certify(3, device)
    enclave_key = Ed25519Signer.generate(DeterministicRng(b"enclave")).public_key
    good = endorse_key(device, cert, "test", 3, enclave_key, enclave=True)
    from qflare.protocol.identity import IdentityError, verify_endorsed_key

    _, key = verify_endorsed_key(good, SimAuthority.default().key, "test", 3)
    assert key == enclave_key
    host_key = Ed25519Signer.generate(DeterministicRng(b"host")).public_key
    swapped = EndorsedKey(
        certificate=cert, keystore_pk=host_key, endorsement=good.endorsement, enclave=True
    )
    for bad, session, index in [(swapped, "test", 3), (good, "other", 3), (good, "test", 4)]:
        with pytest.raises(IdentityError):
            verify_endorsed_key(bad, SimAuthority.default().key, session, index)


def test_compromised_os_cannot_reprovision_or_install_its_own_directory(tmp_path):
    """The host OS drives the TA directly: a fresh OPEN with its own authority is refused; a
    directory of keys it made is left out inside the enclave, so no share ever goes to them."""
    cfg = config(4, 4, 3, mode=Mode.CHRONOS_DM)
    with ExitStack() as stack:
        store = EnclaveKeystore.start(
            tmp_path / "dev", 0, scheme=SCHEME, authority=SimAuthority.default().key
        )
        stack.callback(store.close)
        sealed = store.sealed_state
        store.close()
        with pytest.raises(TrustedAppError, match="provisioned"):
            EnclaveKeystore.start(tmp_path / "dev", 0, scheme=SCHEME, authority=EVIL.key)
        # reopened with its sealed state, a rogue authority passed by the host is ignored
        store = EnclaveKeystore.start(
            tmp_path / "dev", 0, scheme=SCHEME, sealed=sealed, authority=EVIL.key
        )
        stack.callback(store.close)
        host = {u: Ed25519Signer.generate(DeterministicRng(b"h%d" % u)) for u in range(1, 4)}
        own = SimAuthority.default().endorsed({0: store.identity_public_key}, SCHEME)
        rogue = {**own, **EVIL.endorsed({u: s.public_key for u, s in host.items()}, SCHEME)}
        advert = store.begin_epoch(cfg, rogue)
        assert set(store.rejected) == {1, 2, 3}
        entries = (advert, *(_advert(cfg, u, host[u]) for u in range(1, 4)))
        with pytest.raises(RemoteProtocolError) as info:
            store.share_keys(m.KeyDirectory(epoch=cfg.epoch, recipient=0, entries=entries))
        assert info.value.reason is AbortReason.TOO_FEW_CLIENTS


def _advert(cfg, u: int, signer: Ed25519Signer) -> m.EpochKeys:
    from qflare.crypto import X25519KeyPair
    from qflare.protocol.chronos import keys

    rng = DeterministicRng(b"k%d" % u)
    enc, mask = X25519KeyPair.generate(rng), X25519KeyPair.generate(rng)
    pks = tuple(mask.public for _ in range(cfg.key_count))
    transcript = keys.advertise_transcript(cfg, u, enc.public, pks)
    sig = signer.sign(transcript, context=keys.ADVERTISE_CONTEXT)
    return m.EpochKeys(epoch=cfg.epoch, sender=u, enc_pk=enc.public, mask_pks=pks, signature=sig)
