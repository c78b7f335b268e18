"""Exceptions raised by :mod:`qflare.ledger`. Every check raises; none returns ``False``."""

from __future__ import annotations

import enum


class LedgerError(Exception):
    """Base class of every ledger failure."""


class InvalidEntry(LedgerError, ValueError):  # noqa: N818 - a verdict, like InvalidSignature
    """An entry is malformed: bad kind, actor, payload value, timestamp, or encoding.

    A ``ValueError`` too, so ``msgspec`` reports it as a validation error while decoding.
    """


class LedgerTampered(LedgerError):  # noqa: N818 - names what was found, not a failure mode
    """The stored history differs from what was written.

    Attributes:
        index: Position of the first entry at which the inconsistency is observed, or ``None``
            when it concerns the history as a whole (e.g. a signed root that does not match).
        reason: Human-readable description of what did not match.
    """

    def __init__(self, index: int | None, reason: str) -> None:
        self.index = index
        self.reason = reason
        where = "ledger" if index is None else f"entry {index}"
        super().__init__(f"{where}: {reason}")


class InvalidProof(LedgerError):  # noqa: N818 - reads as a verdict, like InvalidSignature
    """A Merkle inclusion or consistency proof does not verify."""


class InvalidTreeHead(LedgerError):  # noqa: N818 - reads as a verdict, like InvalidSignature
    """A signed tree head is malformed or its signature does not verify."""


class LedgerConflict(LedgerError):  # noqa: N818 - names the situation, like LedgerTampered
    """A store was asked to write an entry at a position other than its current size."""


class LedgerForked(LedgerTampered):
    """Two heads signed by the ledger key are provably not one append-only history.

    Raised when a head has the size of a held one but another root, or when the server's
    consistency proof between a held head and a new one does not verify. Either way the operator
    signed two incompatible histories: someone rewrote the ledger.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(None, reason)


class HeadNotAccepted(LedgerError):  # noqa: N818 - a verdict, like InvalidTreeHead
    """A relying party keeps the head it holds: the new one is not (yet) good enough.

    The soft failures: nothing proves that history was rewritten, but the new head cannot be
    trusted either (too few cosignatures, or older than the held head).
    """


class QuorumNotMet(HeadNotAccepted):
    """Fewer valid cosignatures from configured witnesses than the quorum."""


class StaleTreeHead(HeadNotAccepted):
    """A consistent head that is older (smaller) than the one held."""


class InvalidCosignature(LedgerError):  # noqa: N818 - a verdict, like InvalidSignature
    """A witness cosignature is malformed, for another head, or does not verify."""


class InvalidKeyFile(LedgerError, ValueError):  # noqa: N818 - a verdict, like InvalidEntry
    """A public key file is not in the ``mldsa65:<base64>`` format or has the wrong length."""


class RefusalCode(enum.StrEnum):
    """Why a witness refuses to cosign (the ``code`` of its problem+json answer)."""

    BAD_HEAD = "bad_head"  # malformed, or not signed by the pinned ledger key
    BAD_TIMESTAMP = "bad_timestamp"  # in the future, or older than the last cosigned head
    SMALLER_THAN_COSIGNED = "smaller_than_cosigned"  # the ledger shrank
    WRONG_PROOF_RANGE = "wrong_proof_range"  # the proof does not start at the witness's size
    INCONSISTENT = "inconsistent"  # the proof fails: history was rewritten


class WitnessRefused(LedgerError):  # noqa: N818 - a verdict, like InvalidTreeHead
    """A witness will not cosign a head.

    Attributes:
        code: Machine-readable reason.
        reason: Human-readable explanation.
    """

    def __init__(self, code: RefusalCode, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code.value}: {reason}")
