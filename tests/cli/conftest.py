"""CLI commands configure logging and install signal handlers: undo both after each test."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from qflare.logs import UVICORN_LOGGERS

LOGGERS = ("qflare", *UVICORN_LOGGERS)


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for name, (kept, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.level, logger.propagate = kept, level, propagate
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
