"""Sans-IO SecAgg / SecAgg+ client (Bonawitz et al. 2017 with double masking; Bell et al. 2020).

Feed server messages to :meth:`SecAggClient.receive`; send what it returns. Randomness, identity
keys and the round registry are injected; nothing here touches the network, disk or clock.
"""

from __future__ import annotations

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
)
from qflare.protocol import messages as m
from qflare.protocol.errors import (
    AbortReason,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from qflare.protocol.graph import neighbourhoods
from qflare.protocol.secagg import keys
from qflare.protocol.secagg.invariants import (
    ReleaseLog,
    RoundRegistry,
    survivors_and_dropped_disjoint,
)
from qflare.protocol.secagg.states import State

_Handler = Callable[["SecAggClient", Any], m.ClientMessage]


class SecAggClient:
    """One client's side of one secure-aggregation round.

    Args:
        config: Public round parameters.
        client_id: This client's id (must be a participant).
        signer: This client's identity key.
        identities: Identity public keys of the participants (from enrollment).
        rng: Randomness for keys, secrets and Shamir polynomials.
        registry: Round ids already used by this client (the invariant's memory).
        prg: Mask expander to reuse across rounds (its buffers are allocated once per device).
    """

    def __init__(
        self,
        config: m.RoundConfig,
        client_id: int,
        signer: Signer,
        identities: Mapping[int, bytes],
        rng: Rng,
        registry: RoundRegistry,
        prg: MaskPrg | None = None,
    ) -> None:
        if client_id not in config.participants:
            raise LocalProtocolError("client is not a participant", state="INIT", client=client_id)
        self.cfg = config
        self.id = client_id
        self.state = State.R0_ADVERTISE_KEYS
        self._signer, self._identities, self._rng = signer, identities, rng
        self._registry = registry
        self._scheme = SignatureScheme(config.signature_scheme)
        self._graph = neighbourhoods(config.participants, config.k, config.graph_seed)
        self._closed = self._graph[client_id] | {client_id}
        self._shamir = Shamir(config.t)
        self._input: RingVector | None = None
        self._prg = prg
        self._send_keys: dict[int, SecretBytes] = {}
        self._recv_keys: dict[int, SecretBytes] = {}
        self._pair_seeds: dict[int, SecretBytes] = {}
        self._peers: frozenset[int] = frozenset()  # neighbours (and self) that advertised keys
        self._holders: set[int] = set()  # U2 ∩ N[u]: owners of the shares we hold (and self)
        self._b_shares: dict[int, bytes] = {}
        self._sk_shares: dict[int, bytes] = {}
        self._survivors: tuple[int, ...] | None = None
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
        transcript = keys.advertise_transcript(
            self.cfg, self.id, self._enc.public, self._mask.public
        )
        sig = self._signer.sign(transcript, context=keys.ADVERTISE_CONTEXT)
        self.state = State.R1_SHARE_KEYS
        return m.AdvertiseKeys(
            round_id=self.cfg.round_id,
            sender=self.id,
            enc_pk=self._enc.public,
            mask_pk=self._mask.public,
            signature=sig,
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

    # ---- R1: verify neighbours' keys, share secrets --------------------------------------------

    def _on_key_directory(self, msg: m.KeyDirectory) -> m.EncryptedShares:
        peers = {e.sender: e for e in msg.entries}
        own = peers.get(self.id)
        if len(peers) != len(msg.entries) or own is None or not set(peers) <= self._closed:
            self._abort("directory is not a set of our neighbours", AbortReason.INCONSISTENT_VIEW)
        if own.enc_pk != self._enc.public or own.mask_pk != self._mask.public:
            self._abort("server replaced our own public keys", AbortReason.INCONSISTENT_VIEW)
        if len(peers) < self.cfg.t:
            self._abort(f"only {len(peers)} neighbours advertised", AbortReason.TOO_FEW_CLIENTS)
        pks = [e.enc_pk for e in msg.entries] + [e.mask_pk for e in msg.entries]
        if len(set(pks)) != len(pks):
            self._abort("duplicate public keys in the directory", AbortReason.INCONSISTENT_VIEW)
        for entry in msg.entries:
            self._verify_advertisement(entry)
        self._peers = frozenset(peers)  # keys are used now; signatures are not kept
        self._derive_pairwise(peers)
        return self._share_secrets(sorted(peers))

    def _derive_pairwise(self, peers: Mapping[int, m.AdvertiseKeys]) -> None:
        """All agreements with neighbours happen here, once keys are known (R2 only expands)."""
        for v, entry in peers.items():
            if v == self.id:
                continue
            send, recv = keys.share_keys(self.cfg, self._enc, entry.enc_pk, self.id, v)
            self._send_keys[v], self._recv_keys[v] = send, recv
            self._pair_seeds[v] = keys.pair_seed(self.cfg, self._mask, entry.mask_pk, self.id, v)

    def _verify_advertisement(self, entry: m.AdvertiseKeys) -> None:
        identity = self._identities.get(entry.sender, b"")
        transcript = keys.advertise_transcript_of(self.cfg, entry)
        try:
            verify_signature(
                self._scheme, identity, entry.signature, transcript, context=keys.ADVERTISE_CONTEXT
            )
        except CryptoError:
            self._abort("advertised keys are badly signed", AbortReason.BAD_SIGNATURE, entry.sender)

    def _share_secrets(self, holders: list[int]) -> m.EncryptedShares:
        xs = [keys.holder_x(v) for v in holders]
        b_shares = self._shamir.split(self._b, xs, self._rng)
        sk_shares = self._shamir.split(self._mask.private_bytes(), xs, self._rng)
        cts: dict[int, bytes] = {}
        for v, x in zip(holders, xs, strict=True):
            if v == self.id:
                self._b_shares[v], self._sk_shares[v] = b_shares[x], sk_shares[x]
                continue
            payload = m.SharePayload(
                sender=self.id, recipient=v, self_mask_share=b_shares[x], key_share=sk_shares[x]
            )
            aead = Aead(self._send_keys[v])
            aad = keys.share_aad(self.cfg, self.id, v)
            cts[v] = aead.seal(m.encode(payload), aad=aad, sequence=0)
        self.state = State.R2_MASKED_INPUT
        return m.EncryptedShares(round_id=self.cfg.round_id, sender=self.id, ciphertexts=cts)

    # ---- R2: decrypt shares, mask the input ---------------------------------------------------

    def _on_share_relay(self, msg: m.ShareRelay) -> m.MaskedInput:
        if not set(msg.ciphertexts) <= set(self._peers) - {self.id}:
            self._abort("ciphertexts from non-neighbours", AbortReason.INCONSISTENT_VIEW)
        if len(msg.ciphertexts) + 1 < self.cfg.t:
            self._abort("too few neighbours shared keys", AbortReason.TOO_FEW_CLIENTS)
        if self._input is None:
            raise LocalProtocolError(
                "set_input() was not called before R2", state=self.state.value, client=self.id
            )
        for sender, ct in msg.ciphertexts.items():
            self._store_shares(sender, ct)
        self._holders = set(msg.ciphertexts) | {self.id}
        masked = self._mask_input(self._input)
        self._input = None  # the plain update is not kept past R2
        self.state = State.R3_CONSISTENCY
        return m.MaskedInput(round_id=self.cfg.round_id, sender=self.id, vector=masked.tobytes())

    def _store_shares(self, sender: int, ct: bytes) -> None:
        aead = Aead(self._recv_keys[sender])
        try:
            raw = aead.open(ct, aad=keys.share_aad(self.cfg, sender, self.id), sequence=0)
            payload = m.decode_as(raw, m.SharePayload)
        except (CryptoError, msgspec.MsgspecError):
            self._abort("share ciphertext fails authentication", AbortReason.BAD_CIPHERTEXT, sender)
        if payload.sender != sender or payload.recipient != self.id:
            self._abort("share ciphertext names wrong parties", AbortReason.BAD_CIPHERTEXT, sender)
        self._b_shares[sender], self._sk_shares[sender] = payload.self_mask_share, payload.key_share

    def _mask_input(self, y: RingVector) -> RingVector:
        """Mask ``y`` in place: ``y += PRG(b) + sum_v ±PRG(s_uv)`` over neighbours in U2."""
        prg = self._prg
        if prg is None or prg.dim != self.cfg.dim or prg.dtype != y.dtype:
            prg = self._prg = MaskPrg(self.cfg.dim, self.cfg.modulus_bits)
        prg.add_into(y, keys.self_mask_seed(self.cfg, self._b))
        for v in sorted(self._holders - {self.id}):
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
        transcript = keys.consistency_transcript(self.cfg, survivors)
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
        if not self._holders <= alive | gone:
            self._abort("unmask request omits some neighbours", AbortReason.INCONSISTENT_VIEW)
        self._verify_consistency(msg, alive)
        survivors, dropped = self._holders & alive, self._holders & gone
        self.released.record(self_mask=survivors, key=dropped, state=state)
        self.state = State.COMPLETED
        return m.UnmaskShares(
            round_id=self.cfg.round_id,
            sender=self.id,
            self_mask_shares={v: self._b_shares[v] for v in sorted(survivors)},
            key_shares={v: self._sk_shares[v] for v in sorted(dropped)},
        )

    def _verify_consistency(self, msg: m.UnmaskRequest, survivors: set[int]) -> None:
        """Every share owner needs ``t`` members of its own neighbourhood vouching for U3.

        Honest clients sign one survivor set per round, so with ``2t > k + corrupt`` a server
        cannot show two different sets to two groups of one owner's share holders.
        """
        transcript = keys.consistency_transcript(self.cfg, tuple(sorted(survivors)))
        vouched: set[int] = set()
        for signer, sig in msg.signatures.items():
            if signer not in survivors:
                self._abort("signature from a non-survivor", AbortReason.INCONSISTENT_VIEW, signer)
            identity = self._identities.get(signer, b"")
            try:
                verify_signature(
                    self._scheme, identity, sig, transcript, context=keys.CONSISTENCY_CONTEXT
                )
            except CryptoError:
                self._abort(
                    "a peer signed another survivor set", AbortReason.INCONSISTENT_VIEW, signer
                )
            vouched.add(signer)
        for owner in self._holders:
            if len(vouched & (self._graph[owner] | {owner})) < self.cfg.t:
                self._abort("fewer than t neighbours signed U3", AbortReason.TOO_FEW_CLIENTS, owner)


_TRANSITIONS: dict[tuple[State, type], _Handler] = {
    (State.R1_SHARE_KEYS, m.KeyDirectory): SecAggClient._on_key_directory,
    (State.R2_MASKED_INPUT, m.ShareRelay): SecAggClient._on_share_relay,
    (State.R3_CONSISTENCY, m.ConsistencyRequest): SecAggClient._on_consistency_request,
    (State.R4_UNMASK, m.UnmaskRequest): SecAggClient._on_unmask_request,
}
"""The client's transition table: (state, server message type) -> handler."""
