"""Numbers that arrive from the network.

Every ``float`` field of a message a peer sends is declared :data:`Finite`: msgpack can carry NaN
and the infinities, and a NaN makes every comparison false, so a check such as
``abs(now - timestamp) > skew`` would quietly pass. :data:`Finite` makes the decoder refuse them
(``msgspec.ValidationError``), before any check runs. (``qflare.ledger`` has its own copy: the
two layers do not import each other.)
"""

from __future__ import annotations

import sys
from typing import Annotated

import msgspec

__all__ = ["Finite"]

Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
"""A float that is a real number: NaN, ``inf`` and ``-inf`` fail to decode."""
