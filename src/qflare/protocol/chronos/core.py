"""The one implementation of a CHRONOS client's secret logic.

:class:`KeystoreCore` makes the epoch keys, derives pairwise keys, shares and receives Shamir
shares, combines masks, advances the round counter and keeps the release ledger. It runs
in-process as :class:`~qflare.protocol.chronos.keystore.SoftwareKeystore` and inside the enclave
process for the enclave-backed keystore, which seals :meth:`KeystoreCore.export_state`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NoReturn, Protocol

import msgspec
import numpy as np

from qflare.crypto import MaskPrg, RingVector, Rng, SecretBytes, Signer, X25519KeyPair, ring_dtype
from qflare.protocol.chronos import keys, offline
from qflare.protocol.chronos import messages as m
from qflare.protocol.chronos.invariants import (
    LedgerState,
    ReleaseLedger,
    config_is_sound,
    excluded_not_survivor,
    never_reuse_counter,
    partners_meet_threshold,
    round_in_epoch,
    survivors_and_dropped_disjoint,
)
from qflare.protocol.chronos.states import State
from qflare.protocol.errors import AbortReason, LocalProtocolError, RemoteProtocolError

_STATE_VERSION = 1


class RoundCounter(Protocol):
    """A monotonic round counter (an RPMB counter in the enclave, an integer in software)."""

    def read(self) -> int:
        """Current value (0 before the first round)."""
        ...

    def advance(self, to_value: int) -> int:
        """Move to ``to_value`` (persisted before returning); refuse values not above it."""
        ...


class Phase(enum.StrEnum):
    """How far the keystore is through the epoch's offline phase."""

    NO_EPOCH = "no-epoch"
    ADVERTISED = "advertised"
    SHARED = "shared"
    READY = "ready"


class CoreState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a keystore must persist (secret: only ever sealed, never sent in the clear)."""

    version: int = _STATE_VERSION
    phase: Phase
    identities: dict[int, bytes] = {}
    config: m.EpochConfig | None = None
    enc_private: bytes = b""
    mask_private: tuple[bytes, ...] = ()
    self_secrets: tuple[bytes, ...] = ()
    recv_keys: dict[int, bytes] = {}
    pair_keys: dict[int, tuple[bytes, ...]] = {}
    held: dict[int, m.SharePayload] = {}
    partners: tuple[int, ...] = ()
    ledger: LedgerState = msgspec.field(default_factory=LedgerState)


class KeystoreCore:
    """A CHRONOS client's secrets and the rules for using them.

    Args:
        client_id: The client's id.
        signer: The device identity key.
        identities: Identity public keys of all clients (trusted: installed at enrollment).
        rng: Randomness for keys, secrets and Shamir polynomials.
        counter: The monotonic round counter.
        prg: Mask expander to reuse (its buffer is allocated once per device).
        max_precomputed: How many rounds of combined masks to keep (memory bound).
    """

    def __init__(
        self,
        client_id: int,
        signer: Signer,
        identities: Mapping[int, bytes],
        rng: Rng,
        counter: RoundCounter,
        *,
        prg: MaskPrg | None = None,
        max_precomputed: int = 1,
    ) -> None:
        self._id, self._signer, self._rng, self._counter = client_id, signer, rng, counter
        self._prg, self._max_pre = prg, max(0, max_precomputed)
        self._pre: dict[int, RingVector] = {}
        self._load(CoreState(phase=Phase.NO_EPOCH, identities=dict(identities)))

    def _load(self, st: CoreState) -> None:
        self._phase, self._cfg, self._identities = st.phase, st.config, dict(st.identities)
        self._enc = X25519KeyPair(SecretBytes(st.enc_private)) if st.enc_private else None
        self._mask_keys = [X25519KeyPair(SecretBytes(k)) for k in st.mask_private]
        self._secrets = [SecretBytes(s) for s in st.self_secrets]
        self._recv = {v: SecretBytes(k) for v, k in st.recv_keys.items()}
        self._pairs = {v: [SecretBytes(k) for k in ks] for v, ks in st.pair_keys.items()}
        self._held, self._partners = dict(st.held), tuple(st.partners)
        self._ledger = ReleaseLedger(st.ledger)
        self._pre.clear()
        cfg = st.config
        self._rounds = cfg.round_ids if cfg else range(0)
        self._shape = (cfg.dim,) if cfg else (0,)
        self._dtype = ring_dtype(cfg.modulus_bits if cfg else 32)

    def export_state(self) -> SecretBytes:
        """The keystore's secret state, encoded for sealing (never to be sent in the clear)."""
        st = CoreState(
            phase=self._phase,
            identities=dict(sorted(self._identities.items())),
            config=self._cfg,
            enc_private=self._enc.private_bytes().reveal() if self._enc else b"",
            mask_private=tuple(k.private_bytes().reveal() for k in self._mask_keys),
            self_secrets=tuple(s.reveal() for s in self._secrets),
            recv_keys={v: k.reveal() for v, k in sorted(self._recv.items())},
            pair_keys={v: tuple(k.reveal() for k in ks) for v, ks in sorted(self._pairs.items())},
            held=dict(sorted(self._held.items())),
            partners=self._partners,
            ledger=self._ledger.state,
        )
        return SecretBytes(m.encode(st))

    def restore_state(self, state: SecretBytes) -> None:
        """Resume from :meth:`export_state` output (precomputed masks are not persisted).

        Raises:
            LocalProtocolError: the state does not decode.
        """
        try:
            st = msgspec.msgpack.decode(state.reveal(), type=CoreState)
        except (msgspec.MsgspecError, ValueError):
            raise LocalProtocolError("keystore state does not decode", state="RESTORE") from None
        self._load(st)

    def enroll(self, identities: Mapping[int, bytes]) -> None:
        """Install the identity directory (a trusted step of enrollment; sealed with the state)."""
        self._identities = dict(identities)

    @property
    def enrolled(self) -> bool:
        """Whether an identity directory is installed."""
        return bool(self._identities)

    # ---- properties ---------------------------------------------------------------------------

    @property
    def client_id(self) -> int:
        """The client this keystore belongs to."""
        return self._id

    @property
    def identity_public_key(self) -> bytes:
        """Public half of the device identity key."""
        return self._signer.public_key

    @property
    def phase(self) -> Phase:
        """How far the keystore is through the epoch's offline phase."""
        return self._phase

    @property
    def config(self) -> m.EpochConfig | None:
        """The current epoch's configuration (public)."""
        return self._cfg

    @property
    def precomputed_bytes(self) -> int:
        """Memory held by precomputed combined masks."""
        return sum(v.nbytes for v in self._pre.values())

    def last_round(self) -> int:
        """The round counter."""
        return self._counter.read()

    # ---- helpers ------------------------------------------------------------------------------

    def _refuse(
        self, why: str, state: State, reason: AbortReason, who: int | None = None
    ) -> NoReturn:
        client = self._id if who is None else who
        raise RemoteProtocolError(why, state=state.value, client=client, reason=reason)

    def _require(self, phase: Phase, state: State) -> m.EpochConfig:
        if self._phase is not phase or self._cfg is None:
            raise LocalProtocolError(
                f"keystore is {self._phase.value}, not {phase.value}",
                state=state.value,
                client=self._id,
            )
        return self._cfg

    def _check_addressed(self, cfg: m.EpochConfig, msg: m.ServerMessage, state: State) -> None:
        if msg.recipient != self._id or msg.epoch != cfg.epoch:
            self._refuse(
                "message for another client or epoch", state, AbortReason.MALFORMED_MESSAGE
            )

    def _mask_prg(self, cfg: m.EpochConfig) -> MaskPrg:
        prg = self._prg
        if prg is None or prg.dim != cfg.dim or prg.dtype != ring_dtype(cfg.modulus_bits):
            prg = self._prg = MaskPrg(cfg.dim, cfg.modulus_bits)
        return prg

    # ---- O0: fresh keys -----------------------------------------------------------------------

    def begin_epoch(self, config: m.EpochConfig) -> m.EpochKeys:
        """Make the epoch's keys (and ``chronos-dm`` self-mask secrets); sign the public halves.

        Raises:
            LocalProtocolError: unsound config, not a participant, or rounds already used.
        """
        st = State.O0_ADVERTISE_KEYS.value
        config_is_sound(config, state=st)
        never_reuse_counter(self._counter.read(), config.first_round, state=st, client=self._id)
        if self._id not in config.participants or config.signature_scheme != self._signer.scheme:
            raise LocalProtocolError("not a participant or wrong identity scheme", state=st)
        self._load(CoreState(phase=Phase.ADVERTISED, identities=self._identities, config=config))
        self._enc = X25519KeyPair.generate(self._rng)
        self._mask_keys = [X25519KeyPair.generate(self._rng) for _ in range(config.key_count)]
        rounds = config.rounds if config.double_masking else 0
        self._secrets = [
            SecretBytes(self._rng.random_bytes(keys.SECRET_BYTES)) for _ in range(rounds)
        ]
        mask_pks = tuple(k.public for k in self._mask_keys)
        transcript = keys.advertise_transcript(config, self._id, self._enc.public, mask_pks)
        return m.EpochKeys(
            epoch=config.epoch,
            sender=self._id,
            enc_pk=self._enc.public,
            mask_pks=mask_pks,
            signature=self._signer.sign(transcript, context=keys.ADVERTISE_CONTEXT),
        )

    # ---- O1: verify, derive, share ------------------------------------------------------------

    def share_keys(self, directory: m.KeyDirectory) -> m.EpochShares:
        """Verify the neighbours' signed keys, derive pairwise keys, share secrets encrypted.

        Raises:
            RemoteProtocolError: the directory is inconsistent or an advertisement is forged.
        """
        state = State.O1_SHARE_KEYS
        cfg = self._require(Phase.ADVERTISED, state)
        self._check_addressed(cfg, directory, state)
        enc = self._enc
        if enc is None:
            raise LocalProtocolError("no encryption key", state=state.value, client=self._id)
        own = m.EpochKeys(
            epoch=cfg.epoch,
            sender=self._id,
            enc_pk=enc.public,
            mask_pks=tuple(k.public for k in self._mask_keys),
            signature=b"",
        )
        peers = offline.check_directory(cfg, self._id, own, directory)
        offline.verify_advertisements(cfg, self._identities, directory.entries)
        derived = offline.derive_pairwise(cfg, self._id, enc, self._mask_keys, peers)
        self._recv, self._pairs = derived.recv, derived.pairs
        payloads = offline.split_shares(
            cfg, self._id, sorted(peers), self._mask_keys, self._secrets, self._rng
        )
        self._held = {self._id: payloads[self._id]}
        self._phase = Phase.SHARED
        ciphertexts = offline.seal_shares(cfg, self._id, payloads, derived.send)
        return m.EpochShares(epoch=cfg.epoch, sender=self._id, ciphertexts=ciphertexts)

    # ---- O2: accept shares --------------------------------------------------------------------

    def accept_shares(self, relay: m.ShareRelay) -> m.EpochReady:
        """Decrypt the neighbours' shares; their senders are this epoch's mask partners.

        Raises:
            RemoteProtocolError: unknown senders, too few partners, or a bad ciphertext.
        """
        state = State.O2_CONFIRM
        cfg = self._require(Phase.SHARED, state)
        self._check_addressed(cfg, relay, state)
        partners = sorted(relay.ciphertexts)
        if not set(partners) <= set(self._recv):
            self._refuse("ciphertexts from non-neighbours", state, AbortReason.INCONSISTENT_VIEW)
        partners_meet_threshold(partners, cfg.t, state=state.value, client=self._id)
        for v in partners:
            self._held[v] = offline.open_shares(
                cfg, self._id, v, relay.ciphertexts[v], self._recv[v]
            )
        self._partners = tuple(partners)
        self._pairs = {v: self._pairs[v] for v in partners}
        self._enc, self._recv, self._phase = None, {}, Phase.READY
        return m.EpochReady(epoch=cfg.epoch, sender=self._id, partners=self._partners)

    # ---- online: precompute and mask ----------------------------------------------------------

    def _add_masks(self, cfg: m.EpochConfig, acc: RingVector, round_id: int) -> None:
        prg, ki = self._mask_prg(cfg), cfg.key_index(round_id)
        for v in self._partners:
            seed = keys.round_seed(cfg, self._pairs[v][ki], self._id, v, round_id)
            prg.apply(acc, seed, keys.pair_sign(self._id, v))
        if cfg.double_masking:
            prg.add_into(acc, keys.self_mask_seed(cfg, self._secrets[ki], round_id))

    def precompute(self, round_id: int) -> None:
        """Combine round ``round_id``'s masks into one vector held here (at most ``max`` rounds).

        Raises:
            LocalProtocolError: no epoch ready, or the round was already used.
            RemoteProtocolError: the round is outside the epoch.
        """
        cfg = self._require(Phase.READY, State.ON_IDLE)
        self._check_round(cfg, self._counter.read(), round_id, State.ON_IDLE)
        if round_id in self._pre or self._max_pre == 0:
            return
        acc = np.zeros(cfg.dim, dtype=self._dtype)
        self._add_masks(cfg, acc, round_id)
        self._pre[round_id] = acc
        while len(self._pre) > self._max_pre:
            del self._pre[min(self._pre)]

    def mask(self, round_id: int, vector: RingVector) -> RingVector:
        """Advance the counter to ``round_id``, then add the round's masks to ``vector`` in place.

        With the round precomputed this is one vector addition; the checks are kept to a few
        comparisons (the named invariants raise when one fails).

        Raises:
            LocalProtocolError: the round was already used (``ROUND_REUSED``), or a wrong vector.
            RemoteProtocolError: the round is outside the epoch.
        """
        cfg, last = self._cfg, self._counter.read()
        if cfg is None or self._phase is not Phase.READY:
            cfg = self._require(Phase.READY, State.ON_MASKED_INPUT)
        if round_id <= last or round_id not in self._rounds:
            self._check_round(cfg, last, round_id, State.ON_MASKED_INPUT)
        if vector.shape != self._shape or vector.dtype != self._dtype:
            raise LocalProtocolError("input has the wrong shape or ring", state="ON_MASKED_INPUT")
        self._counter.advance(round_id)  # persisted before any masked output exists
        pre = self._pre.pop(round_id, None)
        if pre is None:
            self._add_masks(cfg, vector, round_id)
        else:
            vector += pre
        if self._pre:
            for stale in [r for r in self._pre if r < round_id]:
                del self._pre[stale]
        return vector

    def _check_round(self, cfg: m.EpochConfig, last: int, round_id: int, state: State) -> None:
        round_in_epoch(cfg, round_id, state=state.value, client=self._id)
        never_reuse_counter(last, round_id, state=state.value, client=self._id)

    # ---- online: release shares ---------------------------------------------------------------

    def release(self, request: m.UnmaskRequest) -> m.UnmaskShares:
        """Release self-mask shares of surviving holders (``-dm``) and key shares of dropped ones.

        Raises:
            RemoteProtocolError: not the round just masked, inconsistent sets, or an invariant
                of :mod:`~qflare.protocol.chronos.invariants` would break.
        """
        state = State.ON_UNMASK
        cfg = self._require(Phase.READY, state)
        self._check_addressed(cfg, request, state)
        if request.round_id != self._counter.read():
            self._refuse(
                "unmask request is not for the round just masked",
                state,
                AbortReason.UNEXPECTED_MESSAGE,
            )
        alive, gone = set(request.survivors), set(request.dropped)
        if list(request.survivors) != sorted(alive) or self._id not in alive:
            self._refuse(
                "survivor list is malformed or omits us", state, AbortReason.INCONSISTENT_VIEW
            )
        survivors_and_dropped_disjoint(alive, gone, cfg.t, state=state.value)
        excluded_not_survivor(self._ledger.excluded, alive, state=state.value)
        own = {*self._partners, self._id}
        self_mask = sorted(own & alive) if cfg.double_masking else []
        dropped = sorted(set(self._partners) & gone)
        self._ledger.record(request.round_id, self_mask, dropped, state=state.value)
        ri, ki = request.round_id - cfg.first_round, cfg.key_index(request.round_id)
        return m.UnmaskShares(
            epoch=cfg.epoch,
            round_id=request.round_id,
            sender=self._id,
            self_mask_shares={o: self._held[o].self_mask_shares[ri] for o in self_mask},
            key_shares={o: self._held[o].key_shares[ki] for o in dropped},
        )
