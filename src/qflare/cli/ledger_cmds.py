"""``qflare ledger server-key`` and ``qflare ledger verify``: pin the ledger key, audit a server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from qflare.cli.server_cmds import ConfigOpt, load_settings

if TYPE_CHECKING:  # loaded inside the commands: `qflare --help` stays fast
    from qflare.node.ledger_audit import AuditorRecord, VerifyReport

ledger_app = typer.Typer(
    help="The audit ledger: export the ledger key, audit a server from the outside.",
    no_args_is_help=True,
)
KEY_FILE = "ledger-key.pub"


def _short(data: bytes) -> str:
    return data.hex()[:16] + "…"


@ledger_app.command("server-key")
def server_key_cmd(
    config: ConfigOpt = None,
    state_dir: Annotated[Path | None, typer.Option(help="Server key directory.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write it (default: STATE_DIR/ledger-key.pub).")
    ] = None,
) -> None:
    """Write the server's ledger public key file (the server key is made on first use)."""
    from qflare.crypto import SystemRng
    from qflare.ledger import encode_public_key, key_fingerprint
    from qflare.server.identity import load_or_create_identity
    from qflare.store.files import write_atomic

    settings = load_settings(config, state_dir=state_dir)
    signer = load_or_create_identity(settings.state_dir, SystemRng())
    target = out or settings.state_dir / KEY_FILE
    write_atomic(target, encode_public_key(signer.public_key, "server ledger").encode(), 0o644)
    console = Console()
    console.print(f"[green]wrote[/] {target}  (sha256 {key_fingerprint(signer.public_key).hex()})")
    console.print(f"Each witness pins it: qflare witness serve --dir DIR --server-key {target}")


def _read_key(path: Path, option: str) -> bytes:
    from qflare.ledger import decode_public_key

    try:
        return decode_public_key(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint=option) from exc


def _read_record(path: Path | None) -> AuditorRecord | None:
    import msgspec

    from qflare.node.ledger_audit import AuditorRecord

    if path is None or not path.exists():
        return None
    try:
        return msgspec.msgpack.decode(path.read_bytes(), type=AuditorRecord)
    except msgspec.DecodeError as exc:
        raise typer.BadParameter(
            f"{path} is not a saved ledger head: {exc}", param_hint="--state"
        ) from exc


def _print_report(console: Console, server: str, report: VerifyReport, quorum: int, n: int) -> None:
    from qflare.ledger import key_fingerprint as fingerprint

    sth = report.head.sth
    signed = dt.datetime.fromtimestamp(sth.timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    table = Table(title=f"audit ledger of {server}: [bold green]OK[/]", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("tree head", f"{sth.tree_size} entries, root {_short(sth.root_hash)}, {signed}")
    key = report.record.server_public_key
    table.add_row("ledger key", f"sha256 {_short(fingerprint(key))} ({report.key_source})")
    names = ", ".join(_short(w) for w in report.witnesses)
    table.add_row(
        "cosigned by", f"{len(report.witnesses)} of {n} witnesses (quorum {quorum}): {names}"
    )
    table.add_row("entries", f"{report.entries} downloaded; hash chain and Merkle root recomputed")
    previous = (
        "none saved (first run)"
        if report.previous_size is None
        else f"{report.previous_size} entries: extended append-only"
    )
    table.add_row("previous head", previous)
    console.print(table)


@ledger_app.command("verify")
def verify_cmd(
    server: Annotated[str, typer.Option(help="Server URL, e.g. https://fl.example.org:8443.")],
    witness_key: Annotated[
        list[Path],
        typer.Option(exists=True, dir_okay=False, help="A trusted witness's key file (repeat)."),
    ],
    quorum: Annotated[
        int | None, typer.Option(min=1, help="Cosignatures needed (default: every witness).")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="CA certificate (PEM).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow plain http:// (loopback tests).")
    ] = False,
    server_key: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Pin the ledger key file of the server."),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(help="Keeps the verified head between runs (checked for consistency)."),
    ] = None,
) -> None:
    """Audit a server's ledger from the outside; exit 1 on any failure."""
    import msgspec

    from qflare.ledger import LedgerError, LedgerForked
    from qflare.node.ledger_audit import verify_server
    from qflare.node.ledger_watch import WitnessConfig
    from qflare.node.transport import HttpApi, TransportError
    from qflare.store.files import write_atomic

    try:
        witnesses = WitnessConfig.from_files(witness_key, quorum)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--witness-key/--quorum") from exc
    pinned = _read_key(server_key, "--server-key") if server_key is not None else None
    previous = _read_record(state)
    console, err = Console(), Console(stderr=True)
    try:
        with HttpApi(server, ca=ca, insecure=insecure) as api:
            report = verify_server(api, witnesses, server_key=pinned, previous=previous)
    except LedgerForked as exc:
        err.print(f"[bold red]LEDGER FORK DETECTED:[/] {exc}")
        raise typer.Exit(1) from exc
    except (LedgerError, TransportError, ValueError) as exc:
        err.print(f"[bold red]verification failed:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    if state is not None:
        write_atomic(state, msgspec.msgpack.encode(report.record), 0o644)
    _print_report(console, server, report, witnesses.quorum, len(witnesses.keys))
