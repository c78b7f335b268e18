"""Every command and option of the ``qflare`` app, found by walking the Typer tree."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import typer
from typer._typing import is_number_type
from typer.core import TyperGroup, TyperOption

from qflare.cli.app import app


@dataclass(frozen=True)
class OptionSpot:
    """One option of one command: where it is and what it accepts."""

    path: tuple[str, ...]
    option: TyperOption

    @property
    def name(self) -> str:
        return max(self.option.opts, key=len)

    @property
    def label(self) -> str:
        return " ".join(["qflare", *self.path, self.name])

    @property
    def numeric(self) -> bool:
        return is_number_type(self.option.type_descriptor.annotation)

    @property
    def choices(self) -> tuple[object, ...] | None:
        return self.option.type_descriptor.choices


def commands() -> Iterator[tuple[tuple[str, ...], typer.core.TyperCommand | TyperGroup]]:
    """(path, command) for the root, every group and every command, depth first."""
    stack: list[tuple[tuple[str, ...], TyperGroup | typer.core.TyperCommand]] = [
        ((), typer.main.get_command(app))
    ]
    while stack:
        path, command = stack.pop()
        yield path, command
        if isinstance(command, TyperGroup):
            stack += [((*path, name), sub) for name, sub in command.commands.items()]


def options() -> list[OptionSpot]:
    """Every value-taking option (flags and ``--help`` left out)."""
    return [
        OptionSpot(path, param)
        for path, command in commands()
        for param in command.params
        if isinstance(param, TyperOption) and not param.is_flag and param.expose_value
    ]
