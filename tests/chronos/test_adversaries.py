"""A lying server, forged and tampered messages, replays, and excluded clients trying to rejoin."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from qflare.crypto import MaskPrg, RingVector, Shamir, ShamirError
from qflare.protocol.chronos import EpochConfig, Mode, State, keys, recovery
from qflare.protocol.chronos import messages as m
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError
from qflare.sim.chronos_cohort import ChronosCohort
from tests.chronos.helpers import cohort, config, exact, inputs

N, VICTIM = 5, 3


class LyingServer:
    """Runs the offline phase honestly, then talks to the clients directly, lying at will."""

    def __init__(self, cfg: EpochConfig, seed: int = 7) -> None:
        self.cfg = cfg
        self.adverts: dict[int, m.EpochKeys] = {}
        self.co = cohort(cfg, seed, client_hook=self._capture)
        self.co.run_offline()
        self.partners = self.co.server.partners

    def _capture(self, msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.EpochKeys):
            self.adverts[msg.sender] = msg
        return msg

    def mask_all(self, round_id: int) -> dict[int, bytes]:
        ys = {}
        for u, client in self.co.clients.items():
            client.set_input(inputs(self.cfg.dim)(u))
            start = m.RoundStart(epoch=self.cfg.epoch, round_id=round_id, recipient=u)
            ys[u] = client.receive(start).vector
        return ys

    def ask(self, holders, round_id: int, survivors, dropped) -> dict[int, m.UnmaskShares]:
        """Hand each holder's keystore an unmask request directly (as a compromised OS could)."""
        out = {}
        for h in holders:
            request = m.UnmaskRequest(
                epoch=self.cfg.epoch,
                round_id=round_id,
                recipient=h,
                survivors=tuple(sorted(survivors)),
                dropped=tuple(sorted(dropped)),
            )
            try:
                out[h] = self.co.keystores[h].release(request)
            except RemoteProtocolError as exc:
                assert exc.reason in {AbortReason.INVARIANT_VIOLATED, AbortReason.ROUND_REUSED}
        return out

    def unmask(self, y: bytes, responses, round_id: int, victim: int = VICTIM) -> RingVector | None:
        """The server's best effort at the victim's plain input from what it was given."""
        cfg, prg = self.cfg, MaskPrg(self.cfg.dim)
        acc = np.frombuffer(y, dtype=np.uint32).copy()
        try:
            sk = recovery.reconstruct_key(cfg, responses, self.adverts[victim], round_id)
            secret = None
            if cfg.double_masking:
                shares = recovery.collect_shares(responses, victim, self_mask=True)
                secret = Shamir(cfg.t).combine(shares)
        except ShamirError:
            return None
        ki = cfg.key_index(round_id)
        for v in sorted(self.partners[victim]):
            pair = keys.pair_key(cfg, sk, self.adverts[v].mask_pks[ki], victim, v, ki)
            seed = keys.round_seed(cfg, pair, victim, v, round_id)
            prg.apply(acc, seed, -keys.pair_sign(victim, v))
        if secret is not None:
            prg.sub_into(acc, keys.self_mask_seed(cfg, secret, round_id))
        return acc


def _plain(u: int) -> RingVector:
    return inputs(16)(u)


@pytest.mark.parametrize("mode", list(Mode))
def test_server_lying_about_a_dropout(mode):
    """The server got the victim's masked input, then calls it dropped: works only in chronos."""
    server = LyingServer(config(N, N, 3, mode=mode))
    ys = server.mask_all(1)
    others = set(range(N)) - {VICTIM}
    responses = server.ask(others, 1, others, {VICTIM})
    assert len(responses) == len(others)  # the lie itself is unverifiable for the holders
    got = server.unmask(ys[VICTIM], responses, 1)
    if mode is Mode.CHRONOS:
        assert got is not None and np.array_equal(got, _plain(VICTIM))  # the known hole
    else:
        assert got is None  # key shares only: the self mask still hides the input
        again = server.ask(others, 1, set(range(N)), set())  # now ask for the self masks too
        assert again == {}  # every holder already answered round 1
        responses |= server.ask([VICTIM], 1, set(range(N)), set())  # the victim's own share
        assert server.unmask(ys[VICTIM], responses, 1) is None


@pytest.mark.parametrize("group_a", [{0, 1, VICTIM}, {0, VICTIM}, {0, 1, 2, VICTIM}])
def test_chronos_dm_split_views_never_yield_both_secrets(group_a):
    """Group A is told the victim survived, group B that it dropped: 2t > k defeats the split."""
    server = LyingServer(config(N, N, 3, mode=Mode.CHRONOS_DM))
    ys = server.mask_all(1)
    group_b = set(range(N)) - group_a
    responses = server.ask(group_a, 1, set(range(N)), set())
    responses |= server.ask(group_b, 1, set(range(N)) - {VICTIM}, {VICTIM})
    assert server.unmask(ys[VICTIM], responses, 1) is None


@pytest.mark.parametrize("mode", list(Mode))
def test_recovered_key_exposes_earlier_rounds_only_in_chronos(mode):
    """Round 1 is honest; in round 2 the server calls the victim dropped and gets its key."""
    server = LyingServer(config(N, N, 3, mode=mode))
    y1 = server.mask_all(1)
    everyone = set(range(N))
    if mode is Mode.CHRONOS_DM:
        round1 = server.ask(everyone, 1, everyone, set())  # honest: self-mask shares of round 1
    server.mask_all(2)
    round2 = server.ask(everyone - {VICTIM}, 2, everyone - {VICTIM}, {VICTIM})
    if mode is Mode.CHRONOS:  # one key per epoch: round 1's input falls too
        got = server.unmask(y1[VICTIM], round2, 1)
        assert got is not None and np.array_equal(got, _plain(VICTIM))
    else:  # per-round keys: the round-2 key says nothing about round 1
        mixed = {
            h: msgspec.structs.replace(r, key_shares=round2[h].key_shares)
            for h, r in round1.items()
            if h in round2
        }
        with pytest.raises(ShamirError):
            recovery.reconstruct_key(server.cfg, mixed, server.adverts[VICTIM], 1)


@pytest.mark.parametrize("mode", list(Mode))
def test_excluded_client_cannot_rejoin_in_the_same_epoch(mode):
    cfg = config(N, N, 3, mode=mode, rounds=3)
    co = cohort(cfg, 8)
    co.run_offline()
    first = co.run_round(1, inputs(cfg.dim), {VICTIM: State.ON_MASKED_INPUT})
    assert first.result is not None and first.result.recovered == (VICTIM,)
    assert VICTIM in co.server.excluded
    # Round 2: the server does not invite the victim; it comes back anyway and is refused.
    outbox = co.server.open_round(2)
    assert VICTIM not in outbox and all(VICTIM in msg.excluded for msg in outbox.values())
    victim = co.clients[VICTIM]
    victim.set_input(inputs(cfg.dim)(VICTIM))
    sneaked = victim.receive(m.RoundStart(epoch=1, round_id=2, recipient=VICTIM))
    with pytest.raises(RemoteProtocolError) as info:
        co.server.handle(sneaked)
    assert info.value.client == VICTIM and info.value.state == "ON_MASKED_INPUT"
    for u, start in outbox.items():
        co.clients[u].set_input(inputs(cfg.dim)(u))
        co.server.handle(co.clients[u].receive(start))
    # Peers that released the victim's key share refuse to count it as a survivor again.
    peer = min(outbox)
    lie = m.UnmaskRequest(
        epoch=1, round_id=2, recipient=peer, survivors=tuple(range(N)), dropped=()
    )
    with pytest.raises(RemoteProtocolError) as info:
        co.clients[peer].receive(lie)
    assert info.value.reason is AbortReason.INVARIANT_VIOLATED and info.value.client == VICTIM
    # Told it is excluded, the victim's own client refuses to mask.
    victim.set_input(inputs(cfg.dim)(VICTIM))
    with pytest.raises(RemoteProtocolError, match="excluded"):
        victim.receive(m.RoundStart(epoch=1, round_id=3, recipient=VICTIM, excluded=(VICTIM,)))


def test_forged_advertisement_is_refused_by_server_and_keystores():
    cfg = config(N, N, 3)

    def forge(msg: m.ClientMessage) -> m.ClientMessage:
        if isinstance(msg, m.EpochKeys) and msg.sender == VICTIM:
            return msgspec.structs.replace(msg, mask_pks=(bytes(range(32)),))
        return msg

    strict = cohort(cfg, 9, client_hook=forge)
    log = strict.run_offline()
    assert log.server_errors[0].reason is AbortReason.BAD_SIGNATURE
    assert VICTIM not in strict.server.roster
    lax = cohort(cfg, 9, client_hook=forge, server_verifies=False)
    log = lax.run_offline()
    victim_err = log.client_errors.pop(VICTIM)  # it sees its own keys replaced
    assert victim_err.reason is AbortReason.INCONSISTENT_VIEW
    assert not log.client_errors  # the others leave the forger out and go on
    for u, ks in lax.keystores.items():
        if u != VICTIM:
            assert "badly signed" in ks.rejected[VICTIM]
    assert VICTIM not in lax.server.roster


def test_replaced_own_keys_and_tampered_shares_are_refused():
    cfg = config(N, N, 3)
    swap = LyingServer(cfg).adverts[1]

    def tamper(u: int, msg: m.ServerMessage) -> m.ServerMessage:
        if isinstance(msg, m.KeyDirectory) and u == 0:
            entries = tuple(swap if e.sender == 0 else e for e in msg.entries)
            return msgspec.structs.replace(msg, entries=entries)
        if isinstance(msg, m.ShareRelay) and u == 2:
            cts = dict(msg.ciphertexts)
            cts[4] = cts[4][:-1] + bytes([cts[4][-1] ^ 1])
            return msgspec.structs.replace(msg, ciphertexts=cts)
        return msg

    co = cohort(cfg, 10, server_hook=tamper)
    log = co.run_offline()
    assert log.client_errors[0].reason is AbortReason.INCONSISTENT_VIEW
    assert 2 not in log.client_errors  # a tampered share costs 2 the share, not the epoch
    assert "authentication" in co.keystores[2].rejected[4]
    assert 4 in co.server.partners[2]  # still mask partners: only the held share is missing


def test_replayed_round_start_and_stale_unmask_request_are_refused():
    cfg = config(N, N, 3, mode=Mode.CHRONOS_DM)
    co: ChronosCohort = cohort(cfg, 11)
    co.run_offline()
    log = co.run_round(1, inputs(cfg.dim))
    assert exact(log.result.total, tuple(range(N)), cfg)
    co.run_round(2, inputs(cfg.dim))
    client = co.clients[0]
    client.set_input(inputs(cfg.dim)(0))
    stale = m.UnmaskRequest(epoch=1, round_id=1, recipient=0, survivors=tuple(range(N)), dropped=())
    with pytest.raises(RemoteProtocolError, match="round just masked"):
        co.keystores[0].release(stale)
    with pytest.raises(LocalProtocolError) as info:
        client.receive(m.RoundStart(epoch=1, round_id=2, recipient=0))
    assert info.value.reason is AbortReason.ROUND_REUSED and client.state is State.ABORTED
