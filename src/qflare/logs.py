"""Structured logging for the long-running processes: one JSON object per line on stderr.

Entry points (``qflare server``, ``qflare node run``, ``qflare witness serve``, ``qflare authority
serve``) call :func:`configure_logging` once; library code only does
``logging.getLogger("qflare.…")`` and passes fields with ``extra={...}``. Standard library only,
so any layer may use it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import IO, Any, Final

__all__ = [
    "LEVELS",
    "UVICORN_LOGGERS",
    "StructuredFormatter",
    "configure_logging",
    "uvicorn_log_options",
]

LEVELS: Final = ("debug", "info", "warning", "error", "critical")
"""Level names the CLI accepts (case-insensitive)."""
UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")
"""uvicorn's loggers: configured explicitly, since a ``dictConfig`` may have given them handlers."""
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class StructuredFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        body: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(
    level: str = "INFO", loggers: Iterable[str] = ("qflare",), stream: IO[str] | None = None
) -> None:
    """Send the named loggers (and their children) to ``stream`` (stderr) as JSON lines.

    Args:
        level: Level name, any case (``debug`` … ``critical``).
        loggers: Logger names to configure; each gets its own handler and stops propagating.
        stream: Where lines go (default: ``sys.stderr`` at the time of logging).
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter())
    for name in loggers:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def uvicorn_log_options(level: str) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run``: leave logging to us.

    uvicorn does not install its own (text) handlers, so its messages reach the JSON handler of
    :func:`configure_logging`; the per-request access log is on only at ``debug``.
    """
    level = level.lower()
    return {"log_config": None, "log_level": level, "access_log": level == "debug"}
