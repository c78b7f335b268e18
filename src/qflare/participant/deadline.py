"""A warning *before* local training misses the step deadline, not only after.

Training is the one step whose length depends on the node (data, model, a loaded machine);
when it runs long the operator should see it while it can still be acted on, and the line says
how much time was left. Nothing is interrupted: the server decides whether the answer is late.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

__all__ = ["WARN_SHARE", "deadline_watch"]

log = logging.getLogger("qflare.node")
WARN_SHARE = 0.8  # warn once this share of the time to the deadline has passed
_LONGEST_S = 86_400.0  # (a deadline further away is not watched)


@contextlib.contextmanager
def deadline_watch(
    round_id: int, began: float, deadline: float, clock: Callable[[], float]
) -> Iterator[None]:
    """Warn if the block still runs when ``WARN_SHARE`` of the time to ``deadline`` passed.

    At once if the deadline has already passed when the block starts.
    """
    budget = deadline - began
    done = threading.Event()

    def warn() -> None:
        if not done.is_set():
            log.warning(
                "training is about to miss the step deadline",
                extra={
                    "round": round_id,
                    "elapsed_s": round(clock() - began, 3),
                    "left_s": round(deadline - clock(), 3),
                },
            )

    timer = threading.Timer(min(max(0.0, budget * WARN_SHARE), _LONGEST_S), warn)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        done.set()
        timer.cancel()
