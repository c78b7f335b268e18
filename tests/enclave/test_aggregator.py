"""The aggregator TA in its own process, played against by a hostile host (one enclave here)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from qflare.crypto import DeterministicRng, MlDsa65Signer
from qflare.protocol.enclave import ExclusionReason, decode_upload, encode_upload
from qflare.tee import RecordingTap
from qflare.tee.aggregator_host import AggregatorHost, AggregatorRefused
from qflare.tee.aggregator_ta import RoundRefusal
from tests.enclave.federation import DIM, SESSION, Federation, certify, make_federation, vectors

FED = make_federation(6, seed=b"aggregator")


@pytest.fixture(scope="module")
def tap() -> RecordingTap:
    return RecordingTap()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory, tap: RecordingTap) -> Iterator[AggregatorHost]:
    with AggregatorHost.start(tmp_path_factory.mktemp("agg"), FED.config, tap=tap) as running:
        yield running


@pytest.fixture(scope="module")
def rounds() -> Iterator[int]:
    return itertools.count(1)


def _begin(host: AggregatorHost, round_id: int, fed: Federation = FED, **kw: object) -> None:
    args: dict[str, object] = {"defence": "fedavg", "min_accepted": 2}
    args.update(kw)
    host.begin_round(
        session=SESSION,
        round_id=round_id,
        dim=DIM,
        certificates=fed.certificates,
        **args,  # type: ignore[arg-type]
    )


def _fedavg(vecs: npt.NDArray[np.float32], weights: list[float]) -> npt.NDArray[np.float64]:
    w = np.asarray(weights, dtype=np.float64)
    return (vecs.astype(np.float64) * (w / w.sum())[:, None]).sum(axis=0)


def test_exact_weighted_fedavg_and_only_counts_leave(
    host: AggregatorHost, rounds: Iterator[int], tap: RecordingTap
) -> None:
    r = next(rounds)
    _begin(host, r)
    vecs = vectors(4, seed=1)
    weights = [1.0, 2.0, 3.0, 4.0]
    for device, vec, w in zip(FED.devices, vecs, weights, strict=False):
        upload = device.upload(host.public_key, r, vec, weight=w)
        assert host.submit(encode_upload(upload)).accepted
    out = host.finish(r)
    np.testing.assert_allclose(out.delta, _fedavg(vecs, weights), rtol=1e-12, atol=1e-12)
    assert (out.submitted, out.excluded, out.rejected, out.accepted) == (4, 0, 0, 4)
    assert out.weight == 10.0 and out.defence == "fedavg"
    for vec in vecs:  # no individual update crossed the channel in the clear
        assert not tap.saw(vec.tobytes())


def _bad_uploads(host: AggregatorHost, r: int) -> list[tuple[bytes, ExclusionReason]]:
    d = FED.devices
    key = host.public_key
    nan = vectors(1, seed=9)[0]
    nan[0] = np.nan
    inf = vectors(1, seed=9)[0]
    inf[1] = np.inf
    tampered = d[3].upload(key, r, vectors(1)[0])
    flipped = bytes([tampered.ciphertext[0] ^ 1]) + tampered.ciphertext[1:]
    forged = msgspec.structs.replace(tampered, ciphertext=flipped)
    return [
        (d[2].encoded(key, r, nan), ExclusionReason.NOT_A_NUMBER),
        (d[3].encoded(key, r, inf), ExclusionReason.INFINITE),
        (d[4].encoded(key, r, vectors(1, DIM + 3)[0]), ExclusionReason.WRONG_LENGTH),
        (d[5].encoded(key, r + 1, vectors(1)[0]), ExclusionReason.WRONG_ROUND),
        (encode_upload(forged), ExclusionReason.BAD_SIGNATURE),
        (b"not an upload", ExclusionReason.MALFORMED),
    ]


def test_each_bad_upload_is_excluded_with_its_reason_and_the_rest_is_exact(
    host: AggregatorHost, rounds: Iterator[int]
) -> None:
    r = next(rounds)
    _begin(host, r)
    good = vectors(2, seed=2)
    assert host.submit(FED.devices[0].encoded(host.public_key, r, good[0])).accepted
    for upload, reason in _bad_uploads(host, r):
        result = host.submit(upload)
        assert (result.accepted, result.reason) == (False, reason)
    assert host.submit(FED.devices[1].encoded(host.public_key, r, good[1])).accepted
    out = host.finish(r)
    np.testing.assert_allclose(out.delta, _fedavg(good, [1.0, 1.0]), rtol=1e-12, atol=1e-12)
    assert (out.submitted, out.excluded, out.rejected, out.accepted) == (8, 6, 0, 2)


def test_replay_within_a_round_and_into_the_next_round(
    host: AggregatorHost, rounds: Iterator[int]
) -> None:
    r = next(rounds)
    _begin(host, r)
    vecs = vectors(3, seed=3)
    first = [d.encoded(host.public_key, r, v) for d, v in zip(FED.devices, vecs, strict=False)]
    for upload in first[:2]:
        assert host.submit(upload).accepted
    replay = host.submit(first[0])
    assert (replay.accepted, replay.reason) == (False, ExclusionReason.REPLAY)
    # a second, freshly sealed upload from the same device is a replay too
    again = FED.devices[1].encoded(host.public_key, r, vecs[2])
    assert host.submit(again).reason is ExclusionReason.REPLAY
    out = host.finish(r)
    np.testing.assert_allclose(out.delta, _fedavg(vecs[:2], [1.0, 1.0]), rtol=1e-12, atol=1e-12)
    nxt = next(rounds)
    _begin(host, nxt)
    old = host.submit(first[2])  # sealed for round r, never used there
    assert (old.accepted, old.reason) == (False, ExclusionReason.WRONG_ROUND)
    assert host.submit(first[0]).reason is ExclusionReason.WRONG_ROUND
    for d, v in zip(FED.devices[:2], vecs[:2], strict=True):
        assert host.submit(d.encoded(host.public_key, nxt, v)).accepted
    assert host.finish(nxt).accepted == 2


def test_one_aggregate_per_round_and_never_from_too_few(
    host: AggregatorHost, rounds: Iterator[int]
) -> None:
    r = next(rounds)
    _begin(host, r, min_accepted=3)
    vecs = vectors(3, seed=4)
    for d, v in zip(FED.devices[:2], vecs[:2], strict=True):
        assert host.submit(d.encoded(host.public_key, r, v)).accepted
    with pytest.raises(AggregatorRefused) as few:
        host.finish(r)
    assert few.value.reason is RoundRefusal.TOO_FEW_ACCEPTED
    assert host.submit(FED.devices[2].encoded(host.public_key, r, vecs[2])).accepted
    host.finish(r)
    with pytest.raises(AggregatorRefused) as twice:
        host.finish(r)
    assert twice.value.reason is RoundRefusal.ALREADY_RELEASED
    with pytest.raises(AggregatorRefused) as reopen:
        _begin(host, r)
    assert reopen.value.reason is RoundRefusal.ROUND_NOT_NEW
    with pytest.raises(AggregatorRefused) as closed:
        host.submit(FED.devices[3].encoded(host.public_key, r, vecs[0]))
    assert closed.value.reason is RoundRefusal.NO_ROUND


def test_the_host_cannot_lower_the_floor_or_add_its_own_devices(
    host: AggregatorHost, rounds: Iterator[int]
) -> None:
    r = next(rounds)
    with pytest.raises(AggregatorRefused) as floor:
        _begin(host, r, min_accepted=1)
    assert floor.value.reason is RoundRefusal.BAD_PARAMS
    sybil_authority = MlDsa65Signer.generate(DeterministicRng(b"host authority"))
    sybil = MlDsa65Signer.generate(DeterministicRng(b"sybil"))
    forged = certify(sybil_authority, "dev-sybil", 99, sybil)
    with pytest.raises(AggregatorRefused) as cert:
        host.begin_round(
            session=SESSION,
            round_id=r,
            dim=DIM,
            certificates=(*FED.certificates, forged),
            min_accepted=2,
        )
    assert cert.value.reason is RoundRefusal.BAD_CERTIFICATE
    with pytest.raises(AggregatorRefused) as defence:
        _begin(host, r, defence="no-such-rule")
    assert defence.value.reason is RoundRefusal.BAD_PARAMS


@pytest.mark.parametrize(("defence", "params"), [("median", {}), ("cosine", {"threshold": 0.0})])
def test_a_defence_drops_a_flipped_x10_update_inside(
    host: AggregatorHost, rounds: Iterator[int], defence: str, params: dict[str, float]
) -> None:
    r = next(rounds)
    _begin(host, r, defence=defence, params=params, min_accepted=5)
    rng = np.random.default_rng(5)
    direction = rng.standard_normal(DIM).astype(np.float32)
    honest = (direction + 0.1 * rng.standard_normal((5, DIM))).astype(np.float32)
    attack = (-10.0 * direction).astype(np.float32)
    for d, v in zip(FED.devices, [*honest, attack], strict=True):
        assert host.submit(d.encoded(host.public_key, r, v)).accepted
    out = host.finish(r)
    assert out.submitted == 6 and out.excluded == 0
    assert float(np.dot(out.delta, direction)) > 0  # the attack did not flip the aggregate
    if defence == "cosine":
        assert (out.rejected, out.accepted) == (1, 5)
        np.testing.assert_allclose(out.delta, _fedavg(honest, [1.0] * 5), rtol=1e-12, atol=1e-12)
    else:  # the median uses every row; only its value shows the attack failed
        assert (out.rejected, out.accepted) == (0, 6)
        assert np.linalg.norm(out.delta - direction) < 0.5


def test_uploads_cannot_be_decoded_on_the_host_side(host: AggregatorHost) -> None:
    upload = decode_upload(FED.devices[0].encoded(host.public_key, 10**6, vectors(1)[0]))
    assert upload.device_id == "dev-0" and len(upload.ciphertext) == 8 + 4 * DIM + 16
