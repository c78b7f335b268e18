"""What every ``qflare bench`` command shares: a stage line while it runs, JSON when it is done."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn

__all__ = ["emit_json", "stages"]


def emit_json(result: object, output: Path | None) -> None:
    """Print ``result`` as indented JSON, and write the same text to ``output`` if given."""
    text = json.dumps(result, indent=2)
    if output is not None:
        output.write_text(text)
    typer.echo(text)


@contextmanager
def stages(first: str, *, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A one-line progress display on stderr; yields ``say(stage)`` to update its text.

    ``quiet`` (``--json``) shows nothing, so stdout and stderr carry only the result.
    """
    with Progress(
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=quiet,
    ) as bar:
        task = bar.add_task(first)
        yield lambda stage: bar.update(task, description=stage)
