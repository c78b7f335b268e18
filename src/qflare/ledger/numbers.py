"""Numbers that arrive from the network (the ledger's copy of ``qflare.protocol.numbers``).

A NaN makes every comparison false, so a freshness or ordering check on it quietly passes;
:data:`Finite` makes the decoder refuse NaN and the infinities before any check runs.
"""

from __future__ import annotations

import sys
from typing import Annotated

import msgspec

__all__ = ["Finite"]

Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
"""A float that is a real number: NaN, ``inf`` and ``-inf`` fail to decode."""
