"""The ``qflare`` command: the root app, ``--version``, and where every command group is added.

Start-up stays cheap (``qflare --help`` and ``--version`` run in a fraction of a second): the
command modules import only Typer, rich and :mod:`qflare.cli.options` at the top and the heavy
libraries (torch, fastapi, sqlalchemy, uvicorn, numpy, cryptography) inside the commands.
``tests/cli/test_startup.py`` keeps it that way.
"""

from __future__ import annotations

from typing import Annotated

import typer

from qflare import __version__
from qflare.cli.authority_cmds import authority_app
from qflare.cli.bench_cmds import bench_app
from qflare.cli.faults import FaultReportingGroup
from qflare.cli.ledger_cmds import ledger_app
from qflare.cli.node_cmds import node_app
from qflare.cli.server_cmds import register as register_server_commands
from qflare.cli.sim_cmds import attack_app
from qflare.cli.sim_cmds import register as register_sim_commands
from qflare.cli.tee_cmds import tee_app
from qflare.cli.witness_cmds import witness_app

app = typer.Typer(
    help="QFLARE: secure federated learning.",
    no_args_is_help=True,
    add_completion=False,
    cls=FaultReportingGroup,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"qflare {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """QFLARE: secure federated learning."""


register_server_commands(app)
register_sim_commands(app)
app.add_typer(bench_app, name="bench")
app.add_typer(attack_app, name="attack")
app.add_typer(node_app, name="node")
app.add_typer(authority_app, name="authority")
app.add_typer(ledger_app, name="ledger")
app.add_typer(witness_app, name="witness")
app.add_typer(tee_app, name="tee")


def main() -> None:
    """Console-script entry point.

    A database that refuses a command (read-only files, a full disk, an unreachable server)
    is reported in one line, exit status 1, instead of a traceback.
    """
    app()  # FaultReportingGroup turns a database that refuses a command into one line
