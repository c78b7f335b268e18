"""Sans-IO SecAgg / SecAgg+ client (Bonawitz et al. 2017 with double masking; Bell et al. 2020).

Feed server messages to :meth:`SecAggClient.receive`; send what it returns. Randomness, identity
keys and the round registry are injected; nothing here touches the network, disk or clock.

Everything the server sends is checked here before it is used: the round parameters against the
client's own :class:`~qflare.protocol.policy.ClientPolicy`, every peer's identity against the
enrollment authority's certificate, the graph seed against the commitments (:mod:`.seed`), and
each peer's keys, signature and shares. A peer whose data fails a check is excluded from this
client's view of the round (named in :attr:`SecAggClient.rejected`); only a server message that
contradicts itself or this client's own state aborts the client.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import msgspec

from qflare.crypto import (
    Aead,
    CryptoError,
    MaskPrg,
    RingVector,
    Rng,
    SecretBytes,
    Shamir,
    SignatureScheme,
    Signer,
    X25519KeyPair,
    ring_dtype,
    verify_signature,
    x25519_public_is_valid,
)
from qflare.protocol import messages as m
from qflare.protocol.errors import (
    AbortReason,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from qflare.protocol.graph import neighbourhoods
from qflare.protocol.identity import IdentityDirectory
from qflare.protocol.policy import ClientPolicy, check_round_params
from qflare.protocol.secagg import keys
from qflare.protocol.secagg.invariants import (
    ReleaseLog,
    RoundRegistry,
    round_config_is_sound,
    survivors_and_dropped_disjoint,
)
from qflare.protocol.secagg.states import State
from qflare.protocol.seed import SeedParticipant
from qflare.protocol.shares import is_share

_Handler = Callable[["SecAggClient", Any], m.ClientMessage]


class _Held(msgspec.Struct, frozen=True):
    """The shares of one owner that this client holds, with their commitment salt."""

    b: bytes
    sk: bytes
    salt: bytes


class SecAggClient:
    """One client's side of one secure-aggregation round.

    Args:
        config: Public round parameters (from the server: checked against ``policy``).
        client_id: This client's id (must be a participant).
        signer: This client's identity key.
        directory: Certified identity keys of the participants.
        rng: Randomness for keys, secrets, seeds and Shamir polynomials.
        registry: Round ids already used by this client (the invariant's memory).
        prg: Mask expander to reuse across rounds (its buffers are allocated once per device).
        policy: What this client accepts.

    Raises:
        LocalProtocolError: not a participant, or the parameters break ``policy``.
        RemoteProtocolError: the directory lists another identity for this client.
    """

    def __init__(
        self,
        config: m.RoundConfig,
        client_id: int,
        signer: Signer,
        directory: IdentityDirectory,
        rng: Rng,
        registry: RoundRegistry,
        prg: MaskPrg | None = None,
        policy: ClientPolicy | None = None,
    ) -> None:
        if client_id not in config.participants:
            raise LocalProtocolError("client is not a participant", state="INIT", client=client_id)
        policy = policy or ClientPolicy()
        round_config_is_sound(config, state="INIT")
        check_round_params(len(config.participants), config.k, config.t, policy, state="INIT")
        directory.owns(client_id, signer.public_key, state="INIT")
        self.cfg = config
        self.id = client_id
        self.state = State.R0_ADVERTISE_KEYS
        self._signer, self._directory, self._rng = signer, directory, rng
        self._registry = registry
        self._scheme = SignatureScheme(config.signature_scheme)
        self._seed = (
            SeedParticipant(keys.seed_scope(config), client_id, rng, policy.max_seed_restarts)
            if config.sparse
            else None
        )
        self.graph_seed = b""
        self._graph: dict[int, frozenset[int]] = {}
        self._shamir = Shamir(config.t)
        self._input: RingVector | None = None
        self._prg = prg
        self._send_keys: dict[int, SecretBytes] = {}
        self._recv_keys: dict[int, SecretBytes] = {}
        self._pair_seeds: dict[int, SecretBytes] = {}
        self._peers: frozenset[int] = frozenset()  # neighbours we shared with (and self)
        self._partners: frozenset[int] = frozenset()  # mask partners: relay senders (and self)
        self._holders: frozenset[int] = frozenset()  # owners of the shares we hold (and self)
        self._held: dict[int, _Held] = {}
        self._survivors: tuple[int, ...] | None = None
        self.rejected: dict[int, str] = {}
        self.released = ReleaseLog()

    # ---- public API -------------------------------------------------------------------------

    def set_input(self, vector: RingVector) -> None:
        """Hand over the quantised ring vector to aggregate (before the R2 message arrives).

        The client takes ownership of the buffer: it is masked in place and then released.
        """
        dtype = ring_dtype(self.cfg.modulus_bits)
        if vector.dtype != dtype or vector.shape != (self.cfg.dim,):
            raise LocalProtocolError(
                f"input must be {dtype} of shape ({self.cfg.dim},)",
                state=self.state.value,
                client=self.id,
            )
        self._input = vector

    def start(self) -> m.AdvertiseKeys:
        """R0: make fresh keys and the self-mask secret, return the signed advertisement."""
        if self.state is not State.R0_ADVERTISE_KEYS:
            raise LocalProtocolError("start() called twice", state=self.state.value, client=self.id)
        self._registry.claim(self.cfg.session, self.cfg.round_id, state=self.state.value)
        self._enc = X25519KeyPair.generate(self._rng)
        self._mask = X25519KeyPair.generate(self._rng)
        self._b = SecretBytes(self._rng.random_bytes(32))
        commit = self._seed.first_commitment if self._seed is not None else b""
        transcript = keys.advertise_transcript(
            self.cfg, self.id, self._enc.public, self._mask.public, commit
        )
        sig = self._signer.sign(transcript, context=keys.ADVERTISE_CONTEXT)
        self.state = State.R0_REVEAL_SEED if self._seed is not None else State.R1_SHARE_KEYS
        return m.AdvertiseKeys(
            round_id=self.cfg.round_id,
            sender=self.id,
            enc_pk=self._enc.public,
            mask_pk=self._mask.public,
            signature=sig,
            seed_commit=commit,
        )

    def receive(self, msg: m.ServerMessage) -> m.ClientMessage:
        """Process one server message and return the reply.

        Raises:
            RemoteProtocolError: the message is unexpected here, malformed, forged or
                inconsistent; the client moves to ``ABORTED``.
        """
        handler = _TRANSITIONS.get((self.state, type(msg)))
        if handler is None:
            self._abort(f"unexpected {type(msg).__name__}", AbortReason.UNEXPECTED_MESSAGE)
        try:
            self._check_header(msg)
            return handler(self, msg)
        except ProtocolError:
            self.state = State.ABORTED
            raise

    # ---- helpers ------------------------------------------------------------------------------

    def _abort(self, why: str, reason: AbortReason, client: int | None = None) -> NoReturn:
        state = self.state.value
        self.state = State.ABORTED
        who = self.id if client is None else client
        raise RemoteProtocolError(why, state=state, client=who, reason=reason)

    def _check_header(self, msg: m.ServerMessage) -> None:
        if msg.round_id != self.cfg.round_id:
            self._abort(
                f"message for round {msg.round_id}, expected {self.cfg.round_id}",
                AbortReason.UNEXPECTED_MESSAGE,
            )
        if msg.recipient != self.id or msg.version != m.PROTOCOL_VERSION:
            self._abort("message for another client or version", AbortReason.MALFORMED_MESSAGE)

    # ---- R0 (sparse graphs): reveal the seed contribution --------------------------------------

    def _on_seed_commitments(self, msg: m.SeedCommitments) -> m.SeedReveal:
        if self._seed is None:
            self._abort("no seed exchange in a complete graph", AbortReason.UNEXPECTED_MESSAGE)
        reveal, nxt = self._seed.on_commitments(
            msg.attempt,
            msg.commitments,
            frozenset(self.cfg.participants),
            self.cfg.t,
            state=self.state.value,
        )
        self.state = State.R1_SHARE_KEYS
        return m.SeedReveal(
            round_id=self.cfg.round_id,
            sender=self.id,
            attempt=msg.attempt,
            reveal=reveal,
            next_commit=nxt,
        )

    # ---- R1: verify neighbours' keys, share secrets --------------------------------------------

    def _on_key_directory(self, msg: m.KeyDirectory) -> m.EncryptedShares:
        state = self.state.value
        if self._seed is not None:
            self.graph_seed = self._seed.on_reveals(msg.reveals, state=state)
        elif msg.reveals:
            self._abort("seed reveals in a complete graph", AbortReason.MALFORMED_MESSAGE)
        self._graph = neighbourhoods(self.cfg.participants, self.cfg.k, self.graph_seed)
        closed = self._graph[self.id] | {self.id}
        peers = {e.sender: e for e in msg.entries}
        own = peers.pop(self.id, None)
        if len(peers) + 1 != len(msg.entries) or own is None or not set(peers) <= closed:
            self._abort("directory is not a set of our neighbours", AbortReason.INCONSISTENT_VIEW)
        if own.enc_pk != self._enc.public or own.mask_pk != self._mask.public:
            self._abort("server replaced our own public keys", AbortReason.INCONSISTENT_VIEW)
        valid = self._accepted_peers(peers)
        if len(valid) + 1 < self.cfg.t:
            self._abort(f"only {len(valid)} neighbours usable", AbortReason.TOO_FEW_CLIENTS)
        self._peers = frozenset(valid) | {self.id}
        return self._share_secrets(sorted(self._peers))

    def _accepted_peers(self, peers: Mapping[int, m.AdvertiseKeys]) -> dict[int, m.AdvertiseKeys]:
        """Peers whose certificate, keys and signature check out; the others are rejected."""
        counts: dict[bytes, int] = {}
        for e in peers.values():
            for pk in (e.enc_pk, e.mask_pk):
                counts[pk] = counts.get(pk, 0) + 1
        valid: dict[int, m.AdvertiseKeys] = {}
        for v, entry in sorted(peers.items()):
            why = self._peer_problem(entry, counts)
            if why is None:
                why = self._derive_pairwise(v, entry)
            if why is None:
                valid[v] = entry
            else:
                self.rejected[v] = why
        return valid

    def _peer_problem(self, entry: m.AdvertiseKeys, counts: Mapping[bytes, int]) -> str | None:
        pks = (entry.enc_pk, entry.mask_pk)
        if not all(x25519_public_is_valid(pk) for pk in pks):
            return "invalid or small-order public key"
        if any(counts[pk] > 1 for pk in pks) or self._enc.public in pks or self._mask.public in pks:
            return "public keys repeat another client's"
        try:
            identity = self._directory.key_of(entry.sender, state=self.state.value)
            transcript = keys.advertise_transcript_of(self.cfg, entry)
            verify_signature(
                self._scheme, identity, entry.signature, transcript, context=keys.ADVERTISE_CONTEXT
            )
        except RemoteProtocolError as exc:
            return str(exc).split("] ", 1)[-1]
        except CryptoError:
            return "advertised keys are badly signed"
        return None

    def _derive_pairwise(self, v: int, entry: m.AdvertiseKeys) -> str | None:
        """All agreements with a neighbour happen here, once keys are known (R2 only expands)."""
        try:
            send, recv = keys.share_keys(self.cfg, self._enc, entry.enc_pk, self.id, v)
            pair = keys.pair_seed(self.cfg, self._mask, entry.mask_pk, self.id, v)
        except CryptoError:
            return "key agreement failed"
        self._send_keys[v], self._recv_keys[v], self._pair_seeds[v] = send, recv, pair
        return None

    def _share_secrets(self, holders: list[int]) -> m.EncryptedShares:
        xs = [keys.holder_x(v) for v in holders]
        b_shares = self._shamir.split(self._b, xs, self._rng)
        sk_shares = self._shamir.split(self._mask.private_bytes(), xs, self._rng)
        cts: dict[int, bytes] = {}
        commitments: dict[int, bytes] = {}
        for v, x in zip(holders, xs, strict=True):
            held = _Held(b_shares[x], sk_shares[x], self._rng.random_bytes(keys.SALT_BYTES))
            commitments[v] = self._commit(self.id, v, held)
            if v == self.id:
                self._held[v] = held
                continue
            payload = m.SharePayload(
                sender=self.id,
                recipient=v,
                self_mask_share=held.b,
                key_share=held.sk,
                salt=held.salt,
            )
            aead = Aead(self._send_keys[v])
            aad = keys.share_aad(self.cfg, self.id, v)
            cts[v] = aead.seal(m.encode(payload), aad=aad, sequence=0)
        self.state = State.R2_MASKED_INPUT
        return m.EncryptedShares(
            round_id=self.cfg.round_id,
            sender=self.id,
            ciphertexts=cts,
            commitments=commitments,
            self_mask_commit=keys.self_mask_commitment(self.cfg, self.id, self._b),
        )

    def _commit(self, owner: int, holder: int, held: _Held) -> bytes:
        cfg = self.cfg
        return keys.share_commitment(
            cfg, owner, holder, "b", held.b, held.salt
        ) + keys.share_commitment(cfg, owner, holder, "sk", held.sk, held.salt)

    # ---- R2: decrypt shares, mask the input ---------------------------------------------------

    def _on_share_relay(self, msg: m.ShareRelay) -> m.MaskedInput:
        senders = set(msg.ciphertexts)
        if not senders <= self._peers - {self.id} or set(msg.commitments) != senders:
            self._abort("ciphertexts from non-neighbours", AbortReason.INCONSISTENT_VIEW)
        if len(senders) + 1 < self.cfg.t:
            self._abort("too few neighbours shared keys", AbortReason.TOO_FEW_CLIENTS)
        if self._input is None:
            raise LocalProtocolError(
                "set_input() was not called before R2", state=self.state.value, client=self.id
            )
        missing = {
            v for v in senders if not self._store_shares(v, msg.ciphertexts[v], msg.commitments[v])
        }
        self._partners = frozenset(senders) | {self.id}
        self._holders = self._partners - missing
        masked = self._mask_input(self._input)
        self._input = None  # the plain update is not kept past R2
        self.state = State.R3_CONSISTENCY
        return m.MaskedInput(
            round_id=self.cfg.round_id,
            sender=self.id,
            vector=masked.tobytes(),
            missing=tuple(sorted(missing)),
        )

    def _store_shares(self, sender: int, ct: bytes, commitment: bytes) -> bool:
        """Keep ``sender``'s shares if they decrypt and match its commitments; else reject it."""
        aead = Aead(self._recv_keys[sender])
        try:
            raw = aead.open(ct, aad=keys.share_aad(self.cfg, sender, self.id), sequence=0)
            payload = m.decode_as(raw, m.SharePayload)
        except (CryptoError, msgspec.MsgspecError, ValueError):
            self.rejected[sender] = "share ciphertext fails authentication"
            return False
        held = _Held(payload.self_mask_share, payload.key_share, payload.salt)
        named = (payload.sender, payload.recipient) == (sender, self.id)
        if not (named and is_share(held.b) and is_share(held.sk)):
            self.rejected[sender] = "share payload is malformed or names wrong parties"
            return False
        if not hmac.compare_digest(self._commit(sender, self.id, held), commitment):
            self.rejected[sender] = "shares do not match their commitments"
            return False
        self._held[sender] = held
        return True

    def _mask_input(self, y: RingVector) -> RingVector:
        """Mask ``y`` in place: ``y += PRG(b) + sum_v ±PRG(s_uv)`` over the mask partners."""
        prg = self._prg
        if prg is None or prg.dim != self.cfg.dim or prg.dtype != y.dtype:
            prg = self._prg = MaskPrg(self.cfg.dim, self.cfg.modulus_bits)
        prg.add_into(y, keys.self_mask_seed(self.cfg, self._b))
        for v in sorted(self._partners - {self.id}):
            prg.apply(y, self._pair_seeds[v], keys.pair_sign(self.id, v))
        return y

    # ---- R3: sign the survivor set ------------------------------------------------------------

    def _on_consistency_request(self, msg: m.ConsistencyRequest) -> m.ConsistencySignature:
        survivors = tuple(msg.survivors)
        if list(survivors) != sorted(set(survivors)) or self.id not in survivors:
            self._abort("survivor list is malformed or omits us", AbortReason.INCONSISTENT_VIEW)
        if not set(survivors) <= set(self.cfg.participants):
            self._abort("survivor list names non-participants", AbortReason.INCONSISTENT_VIEW)
        if len(survivors) < self.cfg.t:
            self._abort("survivors below the threshold", AbortReason.TOO_FEW_CLIENTS)
        self._survivors = survivors
        transcript = keys.consistency_transcript(self.cfg, survivors, self.graph_seed)
        sig = self._signer.sign(transcript, context=keys.CONSISTENCY_CONTEXT)
        self.state = State.R4_UNMASK
        return m.ConsistencySignature(round_id=self.cfg.round_id, sender=self.id, signature=sig)

    # ---- R4: check signatures, release exactly one share per neighbour -------------------------

    def _on_unmask_request(self, msg: m.UnmaskRequest) -> m.UnmaskShares:
        if tuple(msg.survivors) != self._survivors:
            self._abort("unmask request shows another survivor set", AbortReason.INCONSISTENT_VIEW)
        state = self.state.value
        alive, gone = set(msg.survivors), set(msg.dropped)
        survivors_and_dropped_disjoint(alive, gone, self.cfg.t, state=state)
        if not self._partners <= alive | gone:
            self._abort("unmask request omits some neighbours", AbortReason.INCONSISTENT_VIEW)
        self._verify_consistency(msg, alive)
        survivors, dropped = self._holders & alive, self._holders & gone
        self.released.record(self_mask=survivors, key=dropped, state=state)
        self.state = State.COMPLETED
        held = self._held
        return m.UnmaskShares(
            round_id=self.cfg.round_id,
            sender=self.id,
            self_mask_shares={v: held[v].b + held[v].salt for v in sorted(survivors)},
            key_shares={v: held[v].sk + held[v].salt for v in sorted(dropped)},
        )

    def _verify_consistency(self, msg: m.UnmaskRequest, survivors: set[int]) -> None:
        """Every share owner needs ``t`` members of its own neighbourhood vouching for U3.

        Honest clients sign one survivor set (and graph) per round, so with ``2t > k + corrupt``
        a server cannot show two different sets to two groups of one owner's share holders.
        Signatures that do not verify over our U3 and graph are simply not counted.
        """
        transcript = keys.consistency_transcript(
            self.cfg, tuple(sorted(survivors)), self.graph_seed
        )
        vouched: set[int] = set()
        for signer, sig in msg.signatures.items():
            if signer not in survivors:
                continue
            try:
                identity = self._directory.key_of(signer, state=self.state.value)
                verify_signature(
                    self._scheme, identity, sig, transcript, context=keys.CONSISTENCY_CONTEXT
                )
            except (CryptoError, RemoteProtocolError):
                continue
            vouched.add(signer)
        for owner in self._holders:
            if len(vouched & (self._graph[owner] | {owner})) < self.cfg.t:
                self._abort("fewer than t neighbours signed U3", AbortReason.TOO_FEW_CLIENTS, owner)


_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.R0_REVEAL_SEED, m.SeedCommitments): SecAggClient._on_seed_commitments,
    (State.R1_SHARE_KEYS, m.SeedCommitments): SecAggClient._on_seed_commitments,
    (State.R1_SHARE_KEYS, m.KeyDirectory): SecAggClient._on_key_directory,
    (State.R2_MASKED_INPUT, m.ShareRelay): SecAggClient._on_share_relay,
    (State.R3_CONSISTENCY, m.ConsistencyRequest): SecAggClient._on_consistency_request,
    (State.R4_UNMASK, m.UnmaskRequest): SecAggClient._on_unmask_request,
}
"""The client's transition table: (state, server message type) -> handler."""
