"""A host that crashes and restarts its enclave: rounds stay single-use, old blobs stay dead."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from qflare.tee import RollbackDetected
from qflare.tee.aggregator_host import SEALED_KEY_FILE, AggregatorHost, AggregatorRefused
from qflare.tee.aggregator_ta import RoundRefusal
from qflare.tee.storage import StateLayout
from tests.enclave.federation import DIM, SESSION, make_federation, vectors

FED = make_federation(4, seed=b"restart")


def _begin(host: AggregatorHost, round_id: int, certificates: tuple[bytes, ...]) -> None:
    host.begin_round(
        session=SESSION,
        round_id=round_id,
        dim=DIM,
        certificates=certificates,
        min_accepted=2,
    )


def test_subset_differencing_across_a_restart_fails(tmp_path: Path) -> None:
    vecs = vectors(4, seed=7)
    with AggregatorHost.start(tmp_path, FED.config) as host:
        key = host.public_key
        uploads = [d.encoded(key, 5, v) for d, v in zip(FED.devices, vecs, strict=True)]
        _begin(host, 5, FED.certificates)
        for upload in uploads:
            assert host.submit(upload).accepted
        full = host.finish(5)
        assert full.accepted == 4
    # the host restarts the enclave from the sealed blob and replays round 5 without device 0
    with AggregatorHost.start(tmp_path, FED.config) as again:
        assert again.public_key == key and again.last_round == 5
        with pytest.raises(AggregatorRefused) as refused:
            _begin(again, 5, FED.certificates[1:])
        assert refused.value.reason is RoundRefusal.ROUND_NOT_NEW
        with pytest.raises(AggregatorRefused) as finish:
            again.finish(5)
        assert finish.value.reason is RoundRefusal.ALREADY_RELEASED
        # a later round id opens, but round 5's uploads are dead in it
        _begin(again, 6, FED.certificates[1:])
        assert {again.submit(u).reason for u in uploads[1:]} == {"wrong-round"}


def test_a_round_lost_in_a_crash_is_never_reopened(tmp_path: Path) -> None:
    with AggregatorHost.start(tmp_path, FED.config) as host:
        _begin(host, 3, FED.certificates)
        assert host.submit(FED.devices[0].encoded(host.public_key, 3, vectors(1)[0])).accepted
        os.kill(host.enclave.pid, signal.SIGKILL)  # a crash, not a clean close
    with AggregatorHost.start(tmp_path, FED.config) as again:
        with pytest.raises(AggregatorRefused) as refused:
            _begin(again, 3, FED.certificates)
        assert refused.value.reason is RoundRefusal.ROUND_NOT_NEW


def test_a_rolled_back_key_blob_is_refused(tmp_path: Path) -> None:
    blob = tmp_path / "host" / SEALED_KEY_FILE
    with AggregatorHost.start(tmp_path, FED.config) as host:
        old, old_key = blob.read_bytes(), host.public_key
        rotated = host.rotate_key()
        assert rotated.public_key == host.public_key != old_key and blob.read_bytes() != old
    blob.write_bytes(old)  # the host puts the old key back
    with pytest.raises(RollbackDetected):
        AggregatorHost.start(tmp_path, FED.config)


def test_a_restored_counter_file_is_detected(tmp_path: Path) -> None:
    rpmb = StateLayout(tmp_path).rpmb_path
    vecs = vectors(2, seed=8)
    with AggregatorHost.start(tmp_path, FED.config) as host:
        snapshot = rpmb.read_bytes()  # the counters before round 4
        _begin(host, 4, FED.certificates)
        for d, v in zip(FED.devices, vecs, strict=False):
            assert host.submit(d.encoded(host.public_key, 4, v)).accepted
        host.finish(4)
    rpmb.write_bytes(snapshot)  # the host rewinds trusted storage to re-run round 4
    with pytest.raises(RollbackDetected, match="rolled back"):
        AggregatorHost.start(tmp_path, FED.config)
