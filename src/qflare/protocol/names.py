"""The secure-aggregation protocols a federation can run, by name.

The values are what configuration files, ``QFLARE_PROTOCOL`` and the CLI have always used, so a
name read from any of them converts with ``ProtocolName(value)``. Everything that depends on the
protocol asks the enum (:attr:`ProtocolName.epochs`, :attr:`ProtocolName.sparse_graph`) instead
of comparing strings.
"""

from __future__ import annotations

import enum

__all__ = ["ProtocolName"]


class ProtocolName(enum.StrEnum):
    """A secure-aggregation protocol."""

    SECAGG_PLUS = "secagg+"
    """Sparse Harary graph with the parameter finder's k and t (Bell et al. 2020)."""
    SECAGG = "secagg"
    """Complete graph (Bonawitz et al. 2017)."""
    CHRONOS = "chronos"
    """CHRONOS epochs as published: offline setup once, one online message per round."""
    CHRONOS_DM = "chronos-dm"
    """CHRONOS with double masking: one more online message, safe against a lying server."""
    ENCLAVE = "enclave"
    """Uploads sealed to an attested aggregation enclave, which releases a robust aggregate."""

    @property
    def epochs(self) -> bool:
        """Whether rounds run inside epochs with an offline setup (the CHRONOS family)."""
        return self in (ProtocolName.CHRONOS, ProtocolName.CHRONOS_DM)

    @property
    def sparse_graph(self) -> bool:
        """Whether rounds use the parameter finder's sparse graph (else the complete graph)."""
        return self is ProtocolName.SECAGG_PLUS
