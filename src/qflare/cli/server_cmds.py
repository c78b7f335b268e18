"""``qflare server``, ``qflare certs`` and ``qflare device``.

Enrollment tokens are the enrollment authority's (``qflare authority token``), not the server's.

Every command builds :class:`~qflare.server.settings.ServerSettings` the same way, so the admin
commands operate on the database the server uses. Precedence: command-line options, then
``QFLARE_*`` environment variables, then the ``--config`` file (TOML or JSON, top-level keys
named like the settings fields), then the defaults.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from qflare.cli.options import LogLevel
from qflare.cli.settings_cmds import OPENAPI_NOTE, settings_cmd

if TYPE_CHECKING:  # the heavy modules load inside the commands: `qflare --help` stays fast
    from sqlalchemy.orm import Session, sessionmaker

    from qflare.server.settings import ServerSettings

certs_app = typer.Typer(help="TLS certificates of the server.", no_args_is_help=True)
device_app = typer.Typer(help="Enrolled devices.", no_args_is_help=True)

OPERATOR = "operator"  # audit-ledger actor of the admin commands
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(?:\d+[smhdw])+")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML or JSON settings file.", exists=True, dir_okay=False),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (sqlite:///… or postgresql://…)."),
]


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30m``, ``1h``, ``2d`` or ``1h30m``.

    Units: ``s``, ``m``, ``h``, ``d``, ``w``.

    Raises:
        ValueError: malformed or zero.
    """
    spec = text.strip().lower()
    if not _DURATION.fullmatch(spec):
        raise ValueError(f"{text!r} is not a duration like 30m, 1h, 2d or 1h30m")
    seconds = sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", spec))
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return float(seconds)


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file, checked against the field names.

    Raises:
        ValueError: unknown suffix, unreadable content, not a table, or unknown keys.
    """
    from qflare.server.settings import ServerSettings

    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data: object = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"{path}: the config file must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config file must hold a table of settings")
    unknown = sorted(set(data) - set(ServerSettings.model_fields))
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}")
    return data


def load_settings(config: Path | None = None, **overrides: Any) -> ServerSettings:
    """Settings from options (``None`` = not given), environment, config file and defaults.

    Raises:
        typer.BadParameter: the file or a value is invalid.
    """
    from pydantic import ValidationError

    from qflare.cli.faults import describe_validation_error
    from qflare.server.settings import ServerSettings

    try:
        values = read_config_file(config) if config is not None else {}
        env = ServerSettings()
        values |= {name: getattr(env, name) for name in env.model_fields_set}
        values |= {k: v for k, v in overrides.items() if v is not None}
        return ServerSettings(**values)
    except ValidationError as exc:
        raise typer.BadParameter(describe_validation_error(exc)) from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@contextlib.contextmanager
def _database(settings: ServerSettings) -> Iterator[sessionmaker[Session]]:
    """The server's database (migrated), for the duration of one admin command."""
    from qflare.store.db import make_engine, migrate, session_factory

    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        yield session_factory(engine)
    finally:
        engine.dispose()


def _audit(factory: sessionmaker[Session], kind: str, payload: dict[str, str | float]) -> None:
    from qflare.ledger import Ledger
    from qflare.store import repos

    Ledger(repos.SqlLedgerStore(factory)).append(kind, OPERATOR, payload, time.time())


# ---- qflare certs ------------------------------------------------------------------------------


@certs_app.command("init")
def certs_init(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Output directory (default: STATE_DIR/tls).")
    ] = None,
    hosts: Annotated[
        str, typer.Option(help="Comma-separated DNS names and IP addresses of the server.")
    ] = "localhost,127.0.0.1",
    days: Annotated[
        int, typer.Option(min=1, max=3650, help="Server certificate validity in days.")
    ] = 397,  # qflare.crypto.x509.SERVER_VALID_DAYS (tests/cli/test_options.py checks)
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Make a private CA and a server certificate signed by it (ca.pem, server.pem, server.key)."""
    from qflare.crypto.x509 import describe_certificate
    from qflare.server.tls import init_tls_dir

    target = directory or load_settings(config).state_dir / "tls"
    try:
        files = init_tls_dir(target, hosts.split(","), force=force, server_days=days)
    except (FileExistsError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    ca, cert = (
        describe_certificate(files.ca.read_bytes()),
        describe_certificate(files.cert.read_bytes()),
    )
    out = _console()
    out.print(f"[green]wrote[/] {files.ca}, {files.cert}, {files.key} (0600)")
    out.print(f"server names: {', '.join(cert.dns_names + cert.ip_addresses)}")
    out.print(f"valid until:  {cert.not_after:%Y-%m-%d}")
    out.print(f"CA sha256:    {ca.sha256}")
    out.print(f"Give {files.ca} to the nodes (they pin it); start the server with")
    out.print(f"  qflare server --tls-cert {files.cert} --tls-key {files.key}")


# ---- qflare server -----------------------------------------------------------------------------


def _default_tls(settings: ServerSettings) -> ServerSettings:
    """Use ``STATE_DIR/tls`` (from ``qflare certs init``) when no TLS files were named."""
    from qflare.server.tls import TlsFiles

    files = TlsFiles.in_dir(settings.state_dir / "tls")
    if settings.insecure or settings.tls_cert or settings.tls_key or not files.key.exists():
        return settings
    return settings.model_copy(update={"tls_cert": files.cert, "tls_key": files.key})


def _warn_insecure(err: Console, settings: ServerSettings) -> None:
    err.print(
        Panel(
            f"[bold]INSECURE MODE[/]: serving plain HTTP on {settings.host}:{settings.port}.\n"
            "Enrollment tokens and all request metadata travel unencrypted and the server is\n"
            "not authenticated to the nodes. Use only for tests on loopback.",
            title="WARNING",
            border_style="bold red",
            style="bold red",
        )
    )


def server(
    ctx: typer.Context,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Bind port.")] = None,
    database_url: DatabaseOpt = None,
    state_dir: Annotated[Path | None, typer.Option(help="Server key and TLS directory.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM, 0600).")] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure", help="Serve plain HTTP (loopback tests only).")
    ] = None,
    dev: Annotated[
        bool | None, typer.Option("--dev", help="Development mode: allow unsafe settings.")
    ] = None,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            case_sensitive=False,
            help="JSON-lines log on stderr; per-request access log only at debug (default: info).",
        ),
    ] = None,
) -> None:
    """Run the QFLARE server (TLS required unless --insecure).

    Every setting (with its QFLARE_ variable and default) is listed by `qflare server settings`.
    """
    if ctx.invoked_subcommand is not None:  # `qflare server settings`
        return
    from qflare.server.tls import StartupRefused, check_startup

    settings = _default_tls(
        load_settings(
            config,
            host=host,
            port=port,
            database_url=database_url,
            state_dir=state_dir,
            tls_cert=tls_cert,
            tls_key=tls_key,
            insecure=insecure,
            dev=dev,
            log_level=log_level,
        )
    )
    err = Console(stderr=True)
    try:
        warnings = check_startup(settings)
    except StartupRefused as exc:
        for reason in exc.reasons:
            err.print(f"[bold red]refusing to start:[/] {reason}")
        raise typer.Exit(2) from exc
    if settings.insecure:
        _warn_insecure(err, settings)
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}")
    try:
        serve(settings, settings.log_level)  # binds the port, then checks the database
    except StartupRefused as exc:
        for reason in exc.reasons:
            err.print(f"[bold red]refusing to start:[/] {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


def serve(settings: ServerSettings, log_level: str) -> None:
    """Serve until interrupted (:func:`qflare.server.tls.serve`, imported only now)."""
    from qflare.server.tls import serve as serve_tls

    serve_tls(settings, log_level)


# ---- qflare device -----------------------------------------------------------------------------


@device_app.command("list")
def device_list(config: ConfigOpt = None, database_url: DatabaseOpt = None) -> None:
    """List enrolled devices: client index, certificate serial, and the latest notice.

    A node that declines a round (its policy refuses the parameters, or a peer's identity does
    not check out) or that leaves sends a signed notice; the last one is shown with its time.
    """
    from qflare.store import repos

    with _database(load_settings(config, database_url=database_url)) as factory, factory() as db:
        rows = repos.all_devices(db)
    table = Table(
        "id",
        "index",
        "serial",
        "scheme",
        "key sha256",
        "enrolled",
        "status",
        "last notice",
        title="devices",
    )
    for row in rows:
        status = "active" if row.revoked_at is None else f"revoked {_when(row.revoked_at)}"
        fingerprint = hashlib.sha256(row.identity_pk).hexdigest()[:16]
        table.add_row(
            row.id,
            str(row.client_index),
            _serial(row.certificate),
            row.scheme,
            fingerprint,
            _when(row.enrolled_at),
            status,
            f"{_when(row.last_notice_at)} {row.last_notice}" if row.last_notice else "",
        )
    _console().print(table)


def _serial(certificate: bytes | None) -> str:
    """The certificate's serial (``-`` for a device enrolled before the authority)."""
    from qflare.protocol.identity import IdentityError, parse_certificate

    if certificate is None:
        return "-"
    try:
        return str(parse_certificate(certificate).serial)
    except IdentityError:
        return "malformed"


@device_app.command("revoke")
def device_revoke(
    device_id: Annotated[str, typer.Argument(help="Device id (from `qflare device list`).")],
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Revoke a device: it can no longer open sessions or submit results (audited)."""
    from qflare.store import repos

    with _database(load_settings(config, database_url=database_url)) as factory:
        with factory() as db, db.begin():
            done = repos.revoke_device(db, device_id, time.time())
        if done:
            _audit(factory, "device_revoke", {"device": device_id})
    if not done:
        _console(stderr=True).print(f"[red]no active device {device_id}[/]")
        raise typer.Exit(1)
    _console().print(f"device {device_id} revoked")


def register(app: typer.Typer) -> None:
    """Add ``server`` (and ``server settings``), ``certs`` and ``device`` to the ``qflare`` app."""
    server_app = typer.Typer(invoke_without_command=True, epilog=OPENAPI_NOTE)
    server_app.callback()(server)
    server_app.command("settings")(settings_cmd)
    app.add_typer(server_app, name="server")
    app.add_typer(certs_app, name="certs")
    app.add_typer(device_app, name="device")
