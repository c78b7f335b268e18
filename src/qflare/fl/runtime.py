"""Process-level torch settings, applied inside a ``with`` block and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``, then restore the old value.

    Small models on small batches run fastest on one or two threads; the default (one per
    core) mostly adds synchronisation overhead.

    Args:
        num_threads: Intra-op threads for the block; ``<= 0`` leaves the setting alone.

    Yields:
        Nothing.
    """
    previous = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
