"""``qflare witness init | serve | status``: run an independent ledger witness."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qflare.cli.faults import fail
from qflare.cli.options import LogLevel

witness_app = typer.Typer(
    help="Ledger witness: cosigns the server's tree heads only if they extend what it cosigned.",
    no_args_is_help=True,
)

WitnessDirOpt = Annotated[
    Path, typer.Option("--dir", help="Witness directory (key 0600, public key, state).")
]


def _fail(message: str) -> typer.Exit:
    return fail(message)


@witness_app.command("init")
def init(directory: WitnessDirOpt) -> None:
    """Make the witness's ML-DSA-65 key (seed 0600) and its public key file."""
    from qflare.crypto import SystemRng
    from qflare.ledger import key_fingerprint
    from qflare.witness import WitnessDir, WitnessDirError

    try:
        wdir, public_key = WitnessDir.init(directory, SystemRng())
    except WitnessDirError as exc:
        raise _fail(str(exc)) from exc
    out = Console()
    out.print(f"[green]wrote[/] {wdir.public_key_file} (the key seed stays in {directory}, 0600)")
    out.print(f"witness key sha256: {key_fingerprint(public_key).hex()}")
    out.print("Give the public key file to the server (witness_keys) and to the nodes and auditors")
    out.print("(--witness-key); then run `qflare witness serve --dir … --server-key SERVER.pub`.")


@witness_app.command("serve")
def serve(
    directory: WitnessDirOpt,
    server_key: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="The server's ledger key file (`qflare ledger server-key`), pinned.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Bind port.")] = 9100,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            case_sensitive=False,
            help="JSON-lines log on stderr; per-request access log only at debug.",
        ),
    ] = "info",
) -> None:
    """Serve POST /v1/cosign and GET /v1/witness until interrupted."""
    import uvicorn

    from qflare.ledger import decode_public_key
    from qflare.logs import UVICORN_LOGGERS, configure_logging, uvicorn_log_options
    from qflare.witness import WitnessDir, WitnessDirError, WitnessService, create_witness_app

    try:
        key = decode_public_key(server_key.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--server-key") from exc
    configure_logging(log_level, ("qflare", *UVICORN_LOGGERS))
    wdir = WitnessDir(directory)
    try:
        with wdir.lock():
            service = WitnessService.open(wdir, key, time.time)
            app = create_witness_app(service)
            uvicorn.run(
                app, host=host, port=port, server_header=False, **uvicorn_log_options(log_level)
            )
    except WitnessDirError as exc:
        raise _fail(str(exc)) from exc


@witness_app.command("status")
def status(directory: WitnessDirOpt) -> None:
    """Show the pinned ledger and the last head this witness cosigned."""
    from qflare.ledger import decode_public_key, key_fingerprint
    from qflare.witness import WitnessDir, WitnessDirError

    path = WitnessDir(directory).public_key_file
    try:
        public_key = decode_public_key(path.read_text(encoding="utf-8"))
        state = WitnessDir(directory).saved_state()
    except (OSError, ValueError, WitnessDirError) as exc:
        raise _fail(str(exc)) from exc
    out = Console()
    out.print(f"witness key sha256: {key_fingerprint(public_key).hex()}")
    if state is None:
        out.print("not serving yet: no ledger key pinned")
        return
    out.print(f"pinned ledger key sha256: {state.origin.hex()}")
    when = (
        dt.datetime.fromtimestamp(state.cosigned_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        if state.cosigned_at is not None
        else "never"
    )
    out.print(f"last cosigned head: {state.tree_size} entries, root {state.root_hash.hex()}")
    out.print(f"cosigned at: {when}")
