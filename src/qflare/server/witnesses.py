"""Cosigned ledger heads: the server collects witness cosignatures in the background.

When the ledger has grown, :class:`Cosigner` signs a head and asks every configured witness
(concurrently, with timeouts) to cosign it, sending each a consistency proof from the last head
that witness cosigned (learnt from ``GET /v1/witness``). A head with a quorum of valid
cosignatures becomes the one ``GET /v1/ledger/head`` serves and is persisted in the state
directory (``ledger-head.cosigned``). A refusing witness is logged with its reason; failures back
off exponentially. Nothing here runs inside a request handler.

At start-up the persisted head is compared with the ledger loaded from the database: if the
table no longer hashes to it, someone rewrote history while the server was down. The server says
so loudly ("ledger fork detected") and serves its current head uncosigned; witnesses will refuse
it and nodes holding the old head will detect the fork.

Without witnesses, the served head is freshly signed on every request, as before.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
from starlette.concurrency import run_in_threadpool

from qflare.crypto import MlDsa65Signer
from qflare.ledger import (
    Cosignature,
    CosignedHead,
    CosignRequest,
    InvalidCosignature,
    InvalidTreeHead,
    Ledger,
    LedgerError,
    LedgerTampered,
    RefusalCode,
    SignedTreeHead,
    decode_public_key,
    key_fingerprint,
    verify_cosignature,
    verify_cosigned_head,
    verify_tree_head,
)
from qflare.ledger.merkle import ConsistencyProof
from qflare.ledger.wire import MSGPACK, WitnessStatus
from qflare.ledger.witness import LEDGER_SCHEME
from qflare.server.settings import ServerSettings
from qflare.store.files import write_atomic

log = logging.getLogger("qflare.server.witnesses")
HEAD_FILE: Final = "ledger-head.cosigned"
MAX_BACKOFF_S: Final = 60.0
_FORK_CODES = frozenset({RefusalCode.INCONSISTENT.value, RefusalCode.SMALLER_THAN_COSIGNED.value})


@dataclass(frozen=True)
class WitnessEndpoint:
    """One configured witness.

    Attributes:
        url: Base URL (``http://127.0.0.1:9101``).
        public_key: Its ML-DSA-65 public key (from its key file).
    """

    url: str
    public_key: bytes


class WitnessMisconfigured(Exception):  # noqa: N818 - names the situation
    """A witness answers with another key, or pins another ledger key."""


def load_endpoints(settings: ServerSettings) -> list[WitnessEndpoint]:
    """The witnesses of ``settings``, with their key files read.

    Raises:
        ValueError: a key file is unreadable or malformed.
    """
    endpoints = []
    for url, path in zip(settings.witness_urls, settings.witness_keys, strict=True):
        try:
            key = decode_public_key(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"witness key file {path}: {exc}") from exc
        endpoints.append(WitnessEndpoint(url.rstrip("/"), key))
    return endpoints


class Cosigner:
    """Keeps the latest cosigned head of the server's ledger.

    Args:
        ledger: The server's ledger.
        signer: The server's identity key (the ledger key).
        endpoints: The witnesses (none: heads are signed per request, never cosigned).
        quorum: Cosignatures a head needs (default: all witnesses).
        clock: Wall-clock time.
        state_dir: Where the latest cosigned head is persisted.
        timeout_s: Timeout of one request to a witness.
        transport: An httpx transport instead of the network (tests).
    """

    def __init__(
        self,
        ledger: Ledger,
        signer: MlDsa65Signer,
        endpoints: Sequence[WitnessEndpoint],
        clock: Callable[[], float],
        state_dir: Path,
        *,
        quorum: int | None = None,
        timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._ledger, self._signer, self._clock = ledger, signer, clock
        self._endpoints = tuple(endpoints)
        self._quorum = len(self._endpoints) if quorum is None else quorum
        self._origin = key_fingerprint(signer.public_key)
        self._head_file = state_dir / HEAD_FILE
        self._timeout_s, self._transport = timeout_s, transport
        self._known: dict[str, tuple[int, bytes]] = {}  # witness url -> its last cosigned head
        self._latest = self._load() if self._endpoints else None

    @property
    def enabled(self) -> bool:
        """Whether witnesses are configured."""
        return bool(self._endpoints)

    def current(self) -> CosignedHead:
        """The head to serve: the latest cosigned one, else a freshly signed, uncosigned one."""
        latest = self._latest
        if latest is not None:
            return latest
        return CosignedHead(sth=self._ledger.head(self._signer, self._clock()))

    # ---- the background loop ------------------------------------------------------------------

    async def run(self, interval_s: float) -> None:
        """Cosign new heads every ``interval_s`` seconds until cancelled (backing off on failure)."""
        timeout = httpx.Timeout(self._timeout_s)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport) as client:
            delay = interval_s
            while True:
                try:
                    done = await self.cosign_once(client)
                except Exception:  # the loop must survive; the error is logged
                    log.exception("cosigning failed")
                    done = False
                delay = interval_s if done else min(delay * 2, MAX_BACKOFF_S)
                await asyncio.sleep(delay)

    async def cosign_once(self, client: httpx.AsyncClient) -> bool:
        """Get the current head cosigned if the ledger grew; ``False`` if the quorum failed."""
        try:
            await run_in_threadpool(self._ledger.sync)
        except LedgerTampered as exc:
            log.error("audit ledger changed under the running server", extra={"why": str(exc)})
            return False
        latest = self._latest
        if latest is not None and latest.sth.tree_size == self._ledger.size:
            return True
        sth = await run_in_threadpool(self._ledger.head, self._signer, self._clock())
        answers = await asyncio.gather(*(self._ask(client, w, sth) for w in self._endpoints))
        cosigs = tuple(c for c in answers if c is not None)
        if len(cosigs) < self._quorum:
            log.warning(
                "ledger head not cosigned by a quorum of witnesses",
                extra={"tree_size": sth.tree_size, "cosigned": len(cosigs), "quorum": self._quorum},
            )
            return False
        head = CosignedHead(sth=sth, cosignatures=cosigs)
        await run_in_threadpool(write_atomic, self._head_file, msgspec.msgpack.encode(head))
        self._latest = head
        log.info(
            "ledger head cosigned", extra={"tree_size": sth.tree_size, "witnesses": len(cosigs)}
        )
        return True

    # ---- one witness --------------------------------------------------------------------------

    async def _ask(
        self, client: httpx.AsyncClient, w: WitnessEndpoint, sth: SignedTreeHead
    ) -> Cosignature | None:
        try:
            known = self._known.get(w.url) or await self._status(client, w)
            for attempt in (1, 2):
                body = msgspec.msgpack.encode(CosignRequest(sth=sth, proof=self._proof(known, sth)))
                resp = await client.post(
                    f"{w.url}/v1/cosign",
                    content=body,
                    headers={"content-type": MSGPACK, "accept": MSGPACK},
                )
                if resp.status_code == 200:
                    return self._accept_cosignature(w, sth, resp.content)
                code, detail = _problem(resp)
                if code == RefusalCode.WRONG_PROOF_RANGE.value and attempt == 1:
                    known = await self._status(client, w)  # it cosigned elsewhere; ask again
                    continue
                _log_refusal(w, sth, code, detail)
                return None
        except httpx.HTTPError as exc:
            log.warning(
                "witness unreachable",
                extra={"witness": w.url, "error": type(exc).__name__, "why": str(exc)[:200]},
            )
        except (msgspec.DecodeError, InvalidCosignature, WitnessMisconfigured) as exc:
            log.error("witness answer refused", extra={"witness": w.url, "why": str(exc)[:300]})
        return None

    async def _status(self, client: httpx.AsyncClient, w: WitnessEndpoint) -> tuple[int, bytes]:
        resp = await client.get(f"{w.url}/v1/witness", headers={"accept": MSGPACK})
        resp.raise_for_status()
        status = msgspec.msgpack.decode(resp.content, type=WitnessStatus)
        if not hmac.compare_digest(status.public_key, w.public_key):
            raise WitnessMisconfigured("the witness has another key than its configured key file")
        if not hmac.compare_digest(status.origin, self._origin):
            raise WitnessMisconfigured("the witness pins another ledger key than this server's")
        self._known[w.url] = (status.tree_size, status.root_hash)
        return self._known[w.url]

    def _proof(self, known: tuple[int, bytes], sth: SignedTreeHead) -> ConsistencyProof:
        old_size, old_root = known
        if old_size > sth.tree_size:  # we cannot prove anything; the witness will refuse
            log.error(
                "ledger fork detected: a witness cosigned more entries than this ledger holds",
                extra={"cosigned_size": old_size, "tree_size": sth.tree_size},
            )
            return ConsistencyProof(old_size=sth.tree_size, new_size=sth.tree_size, path=())
        if old_size and not hmac.compare_digest(self._ledger.root(old_size), old_root):
            log.error(
                "ledger fork detected: a witness cosigned another root at this size",
                extra={"cosigned_size": old_size},
            )
        return self._ledger.consistency_proof(old_size, sth.tree_size)

    def _accept_cosignature(
        self, w: WitnessEndpoint, sth: SignedTreeHead, content: bytes
    ) -> Cosignature:
        cosig = msgspec.msgpack.decode(content, type=Cosignature)
        verify_cosignature(cosig, w.public_key, self._origin, sth)
        self._known[w.url] = (sth.tree_size, sth.root_hash)
        return cosig

    # ---- the persisted head -------------------------------------------------------------------

    def _load(self) -> CosignedHead | None:
        path = self._head_file
        if not path.exists():
            return None
        try:
            head = msgspec.msgpack.decode(path.read_bytes(), type=CosignedHead)
            verify_tree_head(head.sth, self._signer.public_key, scheme=LEDGER_SCHEME)
        except (msgspec.DecodeError, InvalidTreeHead) as exc:
            log.warning("ignoring an unreadable cosigned head", extra={"why": str(exc)[:300]})
            return None
        size, ledger_size = head.sth.tree_size, self._ledger.size
        if size > ledger_size or not hmac.compare_digest(
            self._ledger.root(size), head.sth.root_hash
        ):
            log.error(
                "ledger fork detected: the audit entries no longer match the last cosigned head; "
                "the table was rewritten while the server was down",
                extra={"cosigned_size": size, "tree_size": ledger_size},
            )
            return None
        keys = [w.public_key for w in self._endpoints]
        try:
            verify_cosigned_head(head, keys, self._quorum, self._signer.public_key)
        except LedgerError as exc:
            log.warning(
                "the saved head lacks a quorum of today's witnesses", extra={"why": str(exc)}
            )
            return None
        return head


def _problem(resp: httpx.Response) -> tuple[str, str]:
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return "", f"HTTP {resp.status_code}"
    return str(body.get("code") or ""), str(body.get("detail") or "")[:300]


def _log_refusal(w: WitnessEndpoint, sth: SignedTreeHead, code: str, detail: str) -> None:
    extra = {"witness": w.url, "code": code or "error", "why": detail, "tree_size": sth.tree_size}
    if code in _FORK_CODES:
        log.error("witness refused to cosign: ledger fork detected", extra=extra)
    else:
        log.warning("witness refused to cosign", extra=extra)
