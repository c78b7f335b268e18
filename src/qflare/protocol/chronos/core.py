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
from qflare.protocol.graph import neighbourhoods
from qflare.protocol.identity import (
    AuthorityKey,
    EndorsedKey,
    IdentityError,
    decode_authority_key,
    encode_authority_key,
    verify_endorsed_key,
)
from qflare.protocol.numbers import Finite
from qflare.protocol.policy import ClientPolicy, check_round_params
from qflare.protocol.seed import SeedParticipant, SeedState

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


class PolicyState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A :class:`~qflare.protocol.policy.ClientPolicy`, as sealed with the keystore."""

    corrupt_fraction: Finite = 0.05
    security_bits: int = 40
    min_cohort: int = 3
    max_seed_restarts: int = 2

    @classmethod
    def of(cls, policy: ClientPolicy) -> PolicyState:
        """The sealable form of ``policy``."""
        return cls(
            corrupt_fraction=policy.corrupt_fraction,
            security_bits=policy.security_bits,
            min_cohort=policy.min_cohort,
            max_seed_restarts=policy.max_seed_restarts,
        )

    def policy(self) -> ClientPolicy:
        """Back to a :class:`ClientPolicy` (validated again)."""
        return ClientPolicy(
            corrupt_fraction=self.corrupt_fraction,
            security_bits=self.security_bits,
            min_cohort=self.min_cohort,
            max_seed_restarts=self.max_seed_restarts,
        )


class CoreState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a keystore must persist (secret: only ever sealed, never sent in the clear)."""

    version: int = _STATE_VERSION
    phase: Phase
    authority: bytes = b""
    policy: PolicyState = msgspec.field(default_factory=PolicyState)
    identities: dict[int, bytes] = {}
    rejected: dict[int, str] = {}
    config: m.EpochConfig | None = None
    seed: SeedState | None = None
    graph_seed: bytes = b""
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

    Every value from outside (the host OS, the server) is checked here: the epoch parameters
    against the sealed :class:`~qflare.protocol.policy.ClientPolicy`, each peer's identity
    against the enrollment authority's key fixed at provisioning, the graph seed against the
    commitments, each peer's keys and shares.

    Args:
        client_id: The client's id.
        signer: The keystore's identity key (the device key, or a key made inside an enclave
            and endorsed by the device key).
        rng: Randomness for keys, secrets, seeds and Shamir polynomials.
        counter: The monotonic round counter.
        authority: The enrollment authority's key (provisioning: fixed for the keystore's life).
        policy: The client's policy (provisioning, likewise).
        prg: Mask expander to reuse (its buffer is allocated once per device).
        max_precomputed: How many rounds of combined masks to keep (memory bound).
    """

    def __init__(
        self,
        client_id: int,
        signer: Signer,
        rng: Rng,
        counter: RoundCounter,
        *,
        authority: AuthorityKey | None = None,
        policy: ClientPolicy | None = None,
        prg: MaskPrg | None = None,
        max_precomputed: int = 1,
    ) -> None:
        self._id, self._signer, self._rng, self._counter = client_id, signer, rng, counter
        self._prg, self._max_pre = prg, max(0, max_precomputed)
        self._pre: dict[int, RingVector] = {}
        self._load(
            CoreState(
                phase=Phase.NO_EPOCH,
                authority=encode_authority_key(authority) if authority is not None else b"",
                policy=PolicyState.of(policy or ClientPolicy()),
            )
        )

    def _load(self, st: CoreState) -> None:
        self._phase, self._cfg, self._identities = st.phase, st.config, dict(st.identities)
        self._authority = decode_authority_key(st.authority) if st.authority else None
        self._policy_state, self.rejected = st.policy, dict(st.rejected)
        self._seed = SeedParticipant.restore(st.seed, self._rng) if st.seed else None
        self._graph_seed = st.graph_seed
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

    def _state(self, phase: Phase, config: m.EpochConfig | None) -> CoreState:
        return CoreState(
            phase=phase,
            authority=encode_authority_key(self._authority) if self._authority else b"",
            policy=self._policy_state,
            config=config,
        )

    def export_state(self) -> SecretBytes:
        """The keystore's secret state, encoded for sealing (never to be sent in the clear)."""
        st = msgspec.structs.replace(
            self._state(self._phase, self._cfg),
            identities=dict(sorted(self._identities.items())),
            rejected=dict(sorted(self.rejected.items())),
            seed=self._seed.export() if self._seed else None,
            graph_seed=self._graph_seed,
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

    @property
    def authority(self) -> AuthorityKey | None:
        """The enrollment authority key this keystore checks identities against."""
        return self._authority

    @property
    def policy(self) -> ClientPolicy:
        """The policy this keystore checks epoch parameters against."""
        return self._policy_state.policy()

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

    def begin_epoch(
        self, config: m.EpochConfig, directory: Mapping[int, EndorsedKey]
    ) -> m.EpochKeys:
        """Check the epoch and its identity directory; make the epoch's keys; sign them.

        Each directory entry must chain to the enrollment authority (certificate, then the
        device's endorsement of its keystore key); entries that do not are left out (named in
        :attr:`rejected`), and this keystore's own entry must be its own key.

        Raises:
            LocalProtocolError: unsound or weaker-than-policy config, not a participant, no
                authority provisioned, or rounds already used.
            RemoteProtocolError: the directory lists another key for this client.
        """
        st = State.O0_ADVERTISE_KEYS.value
        config_is_sound(config, state=st)
        policy = self.policy
        check_round_params(len(config.participants), config.k, config.t, policy, state=st)
        never_reuse_counter(self._counter.read(), config.first_round, state=st, client=self._id)
        if self._id not in config.participants or config.signature_scheme != self._signer.scheme:
            raise LocalProtocolError("not a participant or wrong identity scheme", state=st)
        identities, rejected = self._verified(config, directory)
        self._load(self._state(Phase.ADVERTISED, config))
        self._identities, self.rejected = identities, rejected
        self._enc = X25519KeyPair.generate(self._rng)
        self._mask_keys = [X25519KeyPair.generate(self._rng) for _ in range(config.key_count)]
        rounds = config.rounds if config.double_masking else 0
        self._secrets = [
            SecretBytes(self._rng.random_bytes(keys.SECRET_BYTES)) for _ in range(rounds)
        ]
        if config.sparse:
            scope = keys.scope(config)
            self._seed = SeedParticipant(scope, self._id, self._rng, policy.max_seed_restarts)
        commit = self._seed.first_commitment if self._seed else b""
        mask_pks = tuple(k.public for k in self._mask_keys)
        transcript = keys.advertise_transcript(config, self._id, self._enc.public, mask_pks, commit)
        return m.EpochKeys(
            epoch=config.epoch,
            sender=self._id,
            enc_pk=self._enc.public,
            mask_pks=mask_pks,
            signature=self._signer.sign(transcript, context=keys.ADVERTISE_CONTEXT),
            seed_commit=commit,
        )

    def _verified(
        self, cfg: m.EpochConfig, directory: Mapping[int, EndorsedKey]
    ) -> tuple[dict[int, bytes], dict[int, str]]:
        state = State.O0_ADVERTISE_KEYS.value
        authority = self._authority
        if authority is None:
            raise LocalProtocolError("no enrollment authority was provisioned", state=state)
        identities: dict[int, bytes] = {}
        rejected: dict[int, str] = {}
        for index in cfg.participants:
            entry = directory.get(index)
            try:
                if entry is None:
                    raise IdentityError("no certificate")
                body, key = verify_endorsed_key(entry, authority, cfg.session, index)
                if body.scheme.value != cfg.signature_scheme:
                    raise IdentityError(f"certificate is for {body.scheme.value} keys")
            except IdentityError as exc:
                rejected[index] = str(exc)
                continue
            identities[index] = key
        if identities.get(self._id) != self._signer.public_key:
            raise RemoteProtocolError(
                "the directory lists another identity for this keystore",
                state=state,
                client=self._id,
                reason=AbortReason.INCONSISTENT_VIEW,
            )
        return identities, rejected

    def reveal_seed(self, msg: m.SeedCommitments) -> m.EpochSeedReveal:
        """O0 (sparse graphs): check the commitment list; reveal our contribution.

        Raises:
            RemoteProtocolError: as :meth:`qflare.protocol.seed.SeedParticipant.on_commitments`.
        """
        state = State.O0_REVEAL_SEED
        cfg = self._require(Phase.ADVERTISED, state)
        self._check_addressed(cfg, msg, state)
        if self._seed is None:
            self._refuse(
                "no seed exchange in a complete graph", state, AbortReason.UNEXPECTED_MESSAGE
            )
        reveal, nxt = self._seed.on_commitments(
            msg.attempt,
            msg.commitments,
            frozenset(cfg.participants),
            cfg.t,
            state=state.value,
        )
        return m.EpochSeedReveal(
            epoch=cfg.epoch, sender=self._id, attempt=msg.attempt, reveal=reveal, next_commit=nxt
        )

    # ---- O1: verify, derive, share ------------------------------------------------------------

    def share_keys(self, directory: m.KeyDirectory) -> m.EpochShares:
        """Verify the neighbours' signed keys, derive pairwise keys, share secrets encrypted.

        Raises:
            RemoteProtocolError: the directory contradicts itself or us, or too few usable peers.
        """
        state = State.O1_SHARE_KEYS
        cfg = self._require(Phase.ADVERTISED, state)
        self._check_addressed(cfg, directory, state)
        enc = self._enc
        if enc is None:
            raise LocalProtocolError("no encryption key", state=state.value, client=self._id)
        if self._seed is not None:
            self._graph_seed = self._seed.on_reveals(directory.reveals, state=state.value)
        elif directory.reveals:
            self._refuse("seed reveals in a complete graph", state, AbortReason.MALFORMED_MESSAGE)
        closed = neighbourhoods(cfg.participants, cfg.k, self._graph_seed)[self._id] | {self._id}
        own = m.EpochKeys(
            epoch=cfg.epoch,
            sender=self._id,
            enc_pk=enc.public,
            mask_pks=tuple(k.public for k in self._mask_keys),
            signature=b"",
        )
        peers = offline.check_directory(cfg, self._id, own, directory, closed)
        usable = self._usable(cfg, peers)
        derived = offline.derive_pairwise(cfg, self._id, enc, self._mask_keys, usable)
        for v, why in derived.rejected.items():
            self.rejected.setdefault(v, why)
        holders = sorted({*derived.send, self._id})
        partners_meet_threshold(list(derived.send), cfg.t, state=state.value, client=self._id)
        self._recv, self._pairs = derived.recv, derived.pairs
        dealt = offline.split_shares(
            cfg, self._id, holders, self._mask_keys, self._secrets, self._rng
        )
        self._held = {self._id: dealt.payloads[self._id]}
        self._phase = Phase.SHARED
        return m.EpochShares(
            epoch=cfg.epoch,
            sender=self._id,
            ciphertexts=offline.seal_shares(cfg, self._id, dealt.payloads, derived.send),
            commitments=dealt.commitments,
            self_mask_commits=dealt.self_mask_commits,
        )

    def _usable(
        self, cfg: m.EpochConfig, peers: Mapping[int, m.EpochKeys]
    ) -> dict[int, m.EpochKeys]:
        """Peers whose advertisement checks out and whose keys repeat nobody else's."""
        counts: dict[bytes, int] = {}
        for e in peers.values():
            for pk in (e.enc_pk, *e.mask_pks):
                counts[pk] = counts.get(pk, 0) + 1
        usable: dict[int, m.EpochKeys] = {}
        for v, entry in sorted(peers.items()):
            if v == self._id:
                continue
            why = offline.advertisement_problem(cfg, self._identities, entry)
            if why is None and any(counts[pk] > 1 for pk in (entry.enc_pk, *entry.mask_pks)):
                why = "public keys repeat another client's"
            if why is None:
                usable[v] = entry
            else:
                self.rejected.setdefault(v, why)
        return usable

    # ---- O2: accept shares --------------------------------------------------------------------

    def accept_shares(self, relay: m.ShareRelay) -> m.EpochReady:
        """Decrypt the neighbours' shares; their senders are this epoch's mask partners.

        A sender whose shares do not open or do not match its commitments stays a partner (the
        pairwise keys do not depend on them) but we hold none of its shares: it is reported as
        ``missing``.

        Raises:
            RemoteProtocolError: unknown senders or too few partners.
        """
        state = State.O2_CONFIRM
        cfg = self._require(Phase.SHARED, state)
        self._check_addressed(cfg, relay, state)
        partners = sorted(relay.ciphertexts)
        if not set(partners) <= set(self._recv) or set(relay.commitments) != set(partners):
            self._refuse("ciphertexts from non-neighbours", state, AbortReason.INCONSISTENT_VIEW)
        partners_meet_threshold(partners, cfg.t, state=state.value, client=self._id)
        missing: list[int] = []
        for v in partners:
            opened = offline.open_shares(
                cfg, self._id, v, relay.ciphertexts[v], self._recv[v], relay.commitments[v]
            )
            if isinstance(opened, str):
                self.rejected[v] = opened
                missing.append(v)
            else:
                self._held[v] = opened
        self._partners = tuple(partners)
        self._pairs = {v: self._pairs[v] for v in partners}
        self._enc, self._recv, self._phase = None, {}, Phase.READY
        return m.EpochReady(
            epoch=cfg.epoch, sender=self._id, partners=self._partners, missing=tuple(missing)
        )

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
        held = set(self._held)  # ourselves and the partners whose shares opened
        self_mask = sorted(held & alive) if cfg.double_masking else []
        dropped = sorted(held & set(self._partners) & gone)
        self._ledger.record(request.round_id, self_mask, dropped, state=state.value)
        ri, ki = request.round_id - cfg.first_round, cfg.key_index(request.round_id)
        h = self._held
        return m.UnmaskShares(
            epoch=cfg.epoch,
            round_id=request.round_id,
            sender=self._id,
            self_mask_shares={o: h[o].self_mask_shares[ri] + h[o].salt for o in self_mask},
            key_shares={o: h[o].key_shares[ki] + h[o].salt for o in dropped},
        )
