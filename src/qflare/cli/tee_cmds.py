"""``qflare tee``: the simulated TEE manufacturer that lets enclave nodes attest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

tee_app = typer.Typer(
    help="The SIMULATED TEE: a stand-in manufacturer that certifies enclave platforms.",
    no_args_is_help=True,
)


@tee_app.command("maker-init")
def maker_init(
    directory: Annotated[Path, typer.Option("--dir", help="Where the maker's key goes.")] = Path(
        "qflare-tee-maker"
    ),
) -> None:
    """Make a simulated manufacturer: maker.key (0600, keep it apart) and maker.cert."""
    from qflare.crypto import SystemRng
    from qflare.tee.maker import MAKER_CERT, init_maker

    try:
        init_maker(directory, SystemRng())
    except FileExistsError as exc:
        raise typer.BadParameter(str(exc)) from None
    Console().print(
        f"simulated TEE maker in {directory}: give servers {directory / MAKER_CERT} as an "
        "attestation root (with attestation_allow_simulated = true), and nodes --tee-maker "
        f"{directory}. SIMULATED: this is not a hardware vendor's root."
    )
