"""Faults of the environment as one line, not a traceback.

A missing or unreadable file, a directory where a file belongs, a refused connection or a
database that cannot be opened are the operator's to fix, not bugs: every ``qflare`` command
reports them as ``error: …`` on stderr and exits 1. Programming errors keep their traceback.
``QFLARE_DEBUG=1`` shows the traceback of environmental faults too.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from pydantic import ValidationError
    from typer._click.core import Context  # Typer's own click; typer.Context subclasses it

__all__ = [
    "FaultReportingGroup",
    "describe_fault",
    "describe_validation_error",
    "fail",
    "one_line",
]

_DB_ERROR = ("sqlalchemy.exc", "SQLAlchemyError")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr (one line, never wrapped); the exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def one_line(text: str) -> str:
    """The first non-empty line of ``text``."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def describe_validation_error(exc: ValidationError) -> str:
    """A settings model's validation errors on one line: ``field: problem (got value); …``."""
    parts = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across fields: the message says it all
            parts.append(message)
            continue
        where = ".".join(str(part) for part in error["loc"])
        got = "" if error["type"] == "missing" else f" (got {error['input']!r})"
        parts.append(f"{where}: {message}{got}")
    return "; ".join(parts)


def _is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from SQLAlchemy (without importing it just to ask)."""
    module = sys.modules.get(_DB_ERROR[0])
    return module is not None and isinstance(exc, getattr(module, _DB_ERROR[1]))


def describe_fault(exc: BaseException) -> str | None:
    """One line for an environmental fault, or ``None`` when ``exc`` is not one."""
    if isinstance(exc, OSError):
        what = exc.strerror or one_line(str(exc)) or type(exc).__name__
        return f"{what}: {exc.filename}" if exc.filename is not None else what
    store_db = sys.modules.get("qflare.store.db")
    if store_db is not None and isinstance(exc, store_db.DatabaseNotWritable):
        return str(exc)
    if _is_database_error(exc):
        if store_db is not None:
            return f"database: {store_db.describe_database_error(exc)}"
        orig = getattr(exc, "orig", None)
        return f"database: {one_line(str(orig if orig is not None else exc))}"
    return None


class FaultReportingGroup(TyperGroup):
    """The root command group: reports environmental faults of any subcommand in one line."""

    def invoke(self, ctx: Context) -> Any:
        """Run the command line; an environmental fault becomes ``error: …`` and exit code 1."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = describe_fault(exc)
            if message is None or os.environ.get("QFLARE_DEBUG"):
                raise
            raise fail(message) from exc
