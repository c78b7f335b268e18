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


@tee_app.command("enclave-measurement")
def enclave_measurement(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The server's settings file.", exists=True, dir_okay=False),
    ] = None,
) -> None:
    """Print the measurement of the server's aggregation enclave (nodes --enclave-measurement).

    It covers the aggregator's code and its configuration: the enrollment authority key and
    ``enclave_min_accepted`` of the server settings.
    """
    from qflare.cli.server_cmds import load_settings
    from qflare.server.enclave_coordinator import aggregator_config, enclave_dir
    from qflare.tee.aggregator_ta import aggregator_measurement

    settings = load_settings(config)
    try:
        measurement = aggregator_measurement(aggregator_config(settings))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    Console().print(measurement.hex())
    Console(stderr=True).print(
        f"nodes: --enclave-measurement {measurement.hex()} --enclave-root "
        f"{enclave_dir(settings) / 'maker' / 'maker.cert'} --allow-simulated-attestation "
        "(SIMULATED enclave: no hardware isolation)"
    )
