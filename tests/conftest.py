"""Settings shared by every test: the hypothesis profile and a clean logging state."""

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "qflare", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "qflare"))


_LOGGERS = ("qflare", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a test's ``configure_logging`` (a CLI run, a served app) did to the loggers.

    Without it a command run in one test leaves ``qflare`` at its own level, with its own handler
    and not propagating, and ``caplog`` in a later test sees other records or none.
    """
    saved = [
        (logger, logger.level, list(logger.handlers), logger.propagate)
        for logger in map(logging.getLogger, _LOGGERS)
    ]
    yield
    for logger, level, handlers, propagate in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
