"""The software keystore: the round counter, precomputed masks, persistence and misuse."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from qflare.crypto import DeterministicRng, SecretBytes
from qflare.protocol.chronos import ChronosKeystore, MemoryCounter, Mode, SoftwareKeystore, State
from qflare.protocol.chronos import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.sim.chronos_cohort import ChronosCohort, software_keystores
from qflare.sim.identities import SimAuthority
from tests.chronos.helpers import cohort, config, directory, exact, inputs, keystores
from tests.protocol.helpers import signers

N = 5


def _uploads(co: ChronosCohort) -> dict[tuple[int, int], bytes]:
    seen: dict[tuple[int, int], bytes] = {}

    def capture(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.MaskedInput):
            seen[(msg.round_id, msg.sender)] = msg.vector
        return msg

    co.client_hook = capture
    return seen


def test_counter_refuses_reuse_and_epochs_below_it():
    cfg = config(N, N, 3, rounds=4)
    co = cohort(cfg, 1)
    co.run_offline()
    ks = co.keystores[0]
    x = inputs(cfg.dim)(0)
    ks.mask(2, x.copy())
    assert ks.last_round() == 2
    for used in (2, 1):
        with pytest.raises(LocalProtocolError) as info:
            ks.mask(used, x.copy())
        assert info.value.reason is AbortReason.ROUND_REUSED
        with pytest.raises(LocalProtocolError):
            ks.precompute(used)
    with pytest.raises(RemoteProtocolError):
        ks.mask(5, x.copy())  # outside the epoch
    with pytest.raises(LocalProtocolError):
        ks.mask(3, x[:-1].copy())  # wrong shape
    with pytest.raises(LocalProtocolError) as info:  # a new epoch may not reuse rounds either
        ks.begin_epoch(config(N, N, 3, epoch=2, first_round=2), co.directory)
    assert info.value.reason is AbortReason.ROUND_REUSED
    ks.begin_epoch(config(N, N, 3, epoch=2, first_round=3), co.directory)
    counter = MemoryCounter(7)
    with pytest.raises(LocalProtocolError):
        counter.advance(7)
    assert counter.advance(8) == 8 == counter.read()


@pytest.mark.parametrize("mode", list(Mode))
def test_precomputed_masks_give_identical_uploads(mode):
    cfg = config(N, 5, 3, mode=mode, rounds=2, dim=64)
    eager, lazy = cohort(cfg, 2), cohort(cfg, 2)
    up_eager, up_lazy = _uploads(eager), _uploads(lazy)
    for co in (eager, lazy):
        co.run_offline()
    for round_id in cfg.round_ids:
        assert set(eager.idle()) == set(range(N)) - set(eager.server.excluded)
        assert all(eager.keystores[u].precomputed_bytes == 4 * cfg.dim for u in range(4))
        a = eager.run_round(round_id, inputs(cfg.dim), {4: State.ON_MASKED_INPUT})
        b = lazy.run_round(round_id, inputs(cfg.dim), {4: State.ON_MASKED_INPUT})
        assert exact(a.result.total, a.result.survivors, cfg)
        assert np.array_equal(a.result.total, b.result.total)
        used = [eager.keystores[u] for u in a.result.survivors]
        assert all(ks.precomputed_bytes == 0 for ks in used)  # consumed: masks are single-use
    assert up_eager == up_lazy and len(up_eager) == 8


def test_precomputation_is_bounded_and_discarded_when_stale():
    cfg = config(N, N, 3, rounds=4, dim=32)
    co = cohort(cfg, 3)
    co.run_offline()
    ks = co.keystores[0]
    for r in (1, 2, 3):
        ks.precompute(r)
    assert ks.precomputed_bytes == 4 * cfg.dim  # max_precomputed=1: only round 3 is kept
    ks.mask(1, inputs(cfg.dim)(0))
    assert ks.precomputed_bytes == 4 * cfg.dim
    ks.mask(3, inputs(cfg.dim)(0))
    assert ks.precomputed_bytes == 0
    never = ChronosCohort(cfg, software_keystores(cfg, seed=3, max_precomputed=0))
    never.run_offline()
    never.idle()
    assert all(ks.precomputed_bytes == 0 for ks in never.keystores.values())


def test_exported_state_resumes_the_epoch_in_a_new_keystore():
    cfg = config(N, N, 3, mode=Mode.CHRONOS_DM, rounds=3)
    stores: dict[int, ChronosKeystore] = dict(keystores(cfg, 4))
    counter = MemoryCounter()  # the device's counter outlives the keystore process
    authority = SimAuthority.default().key
    stores[2] = SoftwareKeystore(
        2, signers(N)[2], DeterministicRng(5), authority=authority, counter=counter
    )
    co = ChronosCohort(cfg, stores)
    co.run_offline()
    co.run_round(1, inputs(cfg.dim))
    fresh = SoftwareKeystore(
        2, signers(N)[2], DeterministicRng(6), authority=authority, counter=counter
    )
    fresh.restore_state(stores[2].export_state())
    co.keystores[2] = co.clients[2].keystore = fresh
    log = co.run_round(2, inputs(cfg.dim), {0: State.ON_MASKED_INPUT})
    assert log.result is not None and exact(log.result.total, log.result.survivors, cfg)
    assert 2 in log.result.survivors
    with pytest.raises(LocalProtocolError):
        fresh.restore_state(SecretBytes(b"\x00garbage"))


def test_keystore_refuses_calls_out_of_order():
    cfg = config(N, N, 3)
    stores = keystores(cfg)
    ks, ids = stores[0], directory(stores)
    with pytest.raises(LocalProtocolError):
        ks.mask(1, inputs(cfg.dim)(0))
    with pytest.raises(LocalProtocolError):
        ks.precompute(1)
    with pytest.raises(LocalProtocolError):
        ks.begin_epoch(msgspec.structs.replace(cfg, participants=(1, 2, 3, 4, 5)), ids)
    with pytest.raises(LocalProtocolError):
        ks.begin_epoch(msgspec.structs.replace(cfg, signature_scheme="mldsa65"), ids)
