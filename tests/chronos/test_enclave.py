"""CHRONOS on the simulated enclave: exact sums, nothing secret on the channel, counters that
survive restarts and rollbacks, attestation of the identity key, and small trusted storage."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import pytest

from qflare.crypto import (
    DeterministicRng,
    Ed25519Signer,
    SecretBytes,
    Shamir,
    SignatureScheme,
    SystemRng,
)
from qflare.protocol.chronos import EpochConfig, Mode, State, keys, recovery
from qflare.protocol.chronos import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError
from qflare.sim.chronos_cohort import ChronosCohort
from qflare.sim.identities import SimAuthority
from qflare.tee import (
    AttestationError,
    AttestationFailure,
    AttestationVerifier,
    RecordingTap,
    RollbackDetected,
    SimEnclave,
    SimulatedRootCa,
    TrustedAppError,
    VerificationPolicy,
    reference_measurement,
    report_data_for,
    storage_report,
)
from qflare.tee.chronos_host import EnclaveKeystore
from qflare.tee.chronos_ta import CHRONOS_TA
from qflare.tee.keyvault import KEYVAULT
from tests.chronos.helpers import config, exact, inputs

SCHEME = SignatureScheme.ED25519
SECURE_BUDGET = 700
AUTHORITY = SimAuthority.default()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as running:
        yield running


def _devices(
    stack: ExitStack, root: Path, n: int, taps: Mapping[int, RecordingTap] | None = None
) -> dict[int, EnclaveKeystore]:
    """``n`` enclave-backed devices, provisioned with the simulation's authority key."""
    stores = {}
    for u in range(n):
        tap = taps[u] if taps else None
        store = EnclaveKeystore.start(
            root / f"device{u}", u, scheme=SCHEME, tap=tap, authority=AUTHORITY.key
        )
        stack.callback(store.close)
        stores[u] = store
    return stores


class _Capture:
    """Client hook keeping the signed keys and the released shares the server sees."""

    def __init__(self) -> None:
        self.adverts: dict[int, m.EpochKeys] = {}
        self.unmask: dict[int, dict[int, m.UnmaskShares]] = {}

    def __call__(self, msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.EpochKeys):
            self.adverts[msg.sender] = msg
        if isinstance(msg, m.UnmaskShares):
            self.unmask.setdefault(msg.round_id, {})[msg.sender] = msg
        return msg


def _server_known_secrets(
    cfg: EpochConfig, capture: _Capture, partners: Mapping[int, frozenset[int]]
) -> list[bytes]:
    """Every secret the server rebuilt from released shares: keys, pair keys, seeds, self masks."""
    out = []
    for round_id, responses in capture.unmask.items():
        ki = cfg.key_index(round_id)
        for owner in {o for r in responses.values() for o in r.key_shares}:
            sk = recovery.reconstruct_key(cfg, responses, capture.adverts[owner], round_id)
            out.append(sk.reveal())
            for v in partners[owner]:
                pair = keys.pair_key(cfg, sk, capture.adverts[v].mask_pks[ki], owner, v, ki)
                out += [pair.reveal(), keys.round_seed(cfg, pair, owner, v, round_id).reveal()]
        for owner in {o for r in responses.values() for o in r.self_mask_shares}:
            secret = Shamir(cfg.t).combine(
                recovery.collect_shares(responses, owner, self_mask=True)
            )
            out += [secret.reveal(), keys.self_mask_seed(cfg, secret, round_id).reveal()]
    assert out, "the run released nothing to check"
    return out


@pytest.mark.parametrize("mode", list(Mode))
def test_exact_sums_and_no_secret_crosses_the_channel(stack, tmp_path, mode):
    n, dropped = 4, 1
    taps = {u: RecordingTap() for u in range(n)}
    cfg = config(n, n, 3, mode=mode, dim=64, rounds=3)
    capture = _Capture()
    co = ChronosCohort(cfg, _devices(stack, tmp_path, n, taps), client_hook=capture)
    co.run_offline()
    for round_id, drops in zip(
        cfg.round_ids, [{}, {dropped: State.ON_MASKED_INPUT}, {}], strict=True
    ):
        co.idle()
        log = co.run_round(round_id, inputs(cfg.dim), drops)
        assert log.result is not None and exact(log.result.total, log.result.survivors, cfg)
    assert co.server.results[1].recovered == (dropped,)
    frames = [frame for tap in taps.values() for _, frame in tap.frames]
    assert any(capture.adverts[dropped].mask_pks[0] in f for f in frames)  # the tap sees traffic
    for secret in _server_known_secrets(cfg, capture, co.server.partners):
        assert not any(secret in frame for frame in frames)


def test_counter_reuse_refused_after_restart_and_rollback(stack, tmp_path):
    cfg = config(3, 3, 2, mode=Mode.CHRONOS_DM, dim=32, rounds=3)
    stores = _devices(stack, tmp_path, 3)
    co = ChronosCohort(cfg, stores)
    co.run_offline()
    after_offline = stores[0].sealed_state
    assert co.run_round(1, inputs(cfg.dim)).result is not None
    latest = stores[0].sealed_state
    assert latest != after_offline  # the release ledger changed, so the state was resealed
    stores[0].close()

    def restart(sealed: bytes) -> EnclaveKeystore:
        store = EnclaveKeystore.start(tmp_path / "device0", 0, scheme=SCHEME, sealed=sealed)
        stack.callback(store.close)
        return store

    with pytest.raises(RollbackDetected):
        restart(after_offline)  # an older sealed state (older ledger) is refused
    again = restart(latest)
    assert again.last_round() == 1 and again.identity_public_key == stores[0].identity_public_key
    with pytest.raises(LocalProtocolError) as info:
        again.mask(1, inputs(cfg.dim)(0))
    assert info.value.reason is AbortReason.ROUND_REUSED
    co.keystores[0] = co.clients[0].keystore = again
    log = co.run_round(2, inputs(cfg.dim))  # the restored device carries on with round 2
    assert log.result is not None and 0 in log.result.survivors
    assert exact(log.result.total, log.result.survivors, cfg)
    again.close()
    with pytest.raises(RollbackDetected):
        restart(latest)  # round 2's release made it stale too
    with pytest.raises(LocalProtocolError):
        restart(again.sealed_state).mask(2, inputs(cfg.dim)(0))


@pytest.fixture(scope="module")
def root() -> SimulatedRootCa:
    return SimulatedRootCa.generate(
        DeterministicRng(b"chronos-root"), scheme=SignatureScheme.ED25519
    )


def _verifier(root: SimulatedRootCa, *, allow_simulated: bool, manifest=CHRONOS_TA):
    policy = VerificationPolicy(
        trusted_roots=(root.certificate,),
        measurements=frozenset({reference_measurement(manifest)}),
        allow_simulated=allow_simulated,
    )
    return AttestationVerifier(policy, rng=SystemRng())


def test_identity_key_attestation_refuses_simulated_and_forged_evidence(stack, tmp_path, root):
    store = EnclaveKeystore.start(
        tmp_path / "d", 0, scheme=SCHEME, provisioner=root, authority=AUTHORITY.key
    )
    stack.callback(store.close)
    ok = store.attest(_verifier(root, allow_simulated=True))
    assert ok.simulated and ok.claims.ta_name == CHRONOS_TA.name

    def refused(
        verifier: AttestationVerifier, evidence=None, public_key=None
    ) -> AttestationFailure:
        nonce = verifier.challenge()
        ev = store.evidence(nonce) if evidence is None else evidence(nonce)
        with pytest.raises(AttestationError) as info:
            verifier.verify(ev, public_key=public_key or store.identity_public_key, nonce=nonce)
        return info.value.reason

    lax = _verifier(root, allow_simulated=True)
    assert refused(_verifier(root, allow_simulated=False)) is AttestationFailure.SIMULATED
    assert refused(_verifier(root, allow_simulated=True, manifest=KEYVAULT)) is (
        AttestationFailure.MEASUREMENT
    )
    other_root = SimulatedRootCa.generate(
        DeterministicRng(b"rogue"), scheme=SignatureScheme.ED25519
    )
    assert (
        refused(_verifier(other_root, allow_simulated=True)) is AttestationFailure.UNTRUSTED_CHAIN
    )
    assert refused(lax, public_key=b"\x01" * 32) is AttestationFailure.KEY_BINDING

    def flipped(nonce: bytes) -> bytes:
        ev = bytearray(store.evidence(nonce))
        ev[-10] ^= 0x01  # inside the signature
        return bytes(ev)

    assert refused(lax, evidence=flipped) in {
        AttestationFailure.BAD_SIGNATURE,
        AttestationFailure.MALFORMED,
    }


def test_host_cannot_get_evidence_over_a_key_it_made(stack, tmp_path, root):
    """A compromised host asks the enclave to vouch for its own key: the TA refuses."""
    store = EnclaveKeystore.start(
        tmp_path / "d", 0, scheme=SCHEME, provisioner=root, authority=AUTHORITY.key
    )
    stack.callback(store.close)
    host_key = Ed25519Signer(SecretBytes(b"\x05" * 32)).public_key
    with pytest.raises(AttestationError) as info:
        store.enclave.evidence(report_data_for(host_key, b"\x09" * 32))
    assert info.value.reason is AttestationFailure.KEY_BINDING
    own = store.enclave.evidence(report_data_for(store.identity_public_key, b"\x09" * 32))
    assert own  # the identity key made inside is still attestable


def test_trusted_storage_is_small_and_flat_in_model_size(stack, tmp_path):
    secure, sealed = [], []
    for dim in (1_000, 1_000_000):
        cfg = config(3, 3, 2, mode=Mode.CHRONOS_DM, dim=dim, rounds=2)
        stores = _devices(stack, tmp_path / str(dim), 3)
        co = ChronosCohort(cfg, stores)
        co.run_offline()
        co.idle()
        assert stores[0].status().precomputed_bytes == 4 * dim  # enclave memory, not storage
        log = co.run_round(1, inputs(dim), {2: State.ON_UNMASK})
        assert log.result is not None and exact(log.result.total, log.result.survivors, cfg)
        report = storage_report(
            tmp_path / str(dim) / "device0", {"chronos": stores[0].sealed_state}
        )
        assert set(report.secure) == {"huk.bin", "rpmb.bin"}
        secure.append(report.secure_total)
        sealed.append(report.host["sealed:chronos"])
    assert secure[0] == secure[1] < SECURE_BUDGET
    assert abs(sealed[0] - sealed[1]) <= 4  # host-held state: only the varint of d differs


def test_the_ta_runs_apart_and_is_provisioned_once(stack, tmp_path):
    store = EnclaveKeystore.start(tmp_path / "d", 0, scheme=SCHEME, authority=AUTHORITY.key)
    stack.callback(store.close)
    enclave = store.enclave
    assert isinstance(enclave, SimEnclave) and enclave.alive
    assert enclave.measurement == reference_measurement(CHRONOS_TA)
    assert store.status().phase == "no-epoch" and store.last_round() == 0
    sealed = store.sealed_state
    store.close()
    with pytest.raises(TrustedAppError, match="provisioned"):  # a fresh start is refused
        EnclaveKeystore.start(tmp_path / "d", 0, scheme=SCHEME, authority=AUTHORITY.key)
    again = EnclaveKeystore.start(tmp_path / "d", 0, scheme=SCHEME, sealed=sealed)
    stack.callback(again.close)
    assert again.identity_public_key == store.identity_public_key
