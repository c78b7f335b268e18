"""``qflare authority``: the enrollment authority's key, tokens, certificates and service.

The authority's directory (``--dir``) holds ``authority.key`` (the trust root of the federation:
keep it offline or on the authority's own host, 0600), ``authority.pub`` (give it to the server
and nothing else) and the authority's database. The aggregation server never reads this directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from qflare.cli.faults import fail
from qflare.cli.options import LogLevel
from qflare.cli.server_cmds import _console, _when, parse_duration

if TYPE_CHECKING:  # loaded inside the commands: `qflare --help` stays fast
    from qflare.authority import AuthorityService, AuthoritySettings

authority_app = typer.Typer(
    help="The enrollment authority: the key the aggregation server does not hold.",
    no_args_is_help=True,
)
token_app = typer.Typer(help="Single-use enrollment tokens signed by the authority.")
authority_app.add_typer(token_app, name="token", no_args_is_help=True)

DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="Authority directory: authority.key, authority.pub, its database."),
]


def _settings(directory: Path | None, **overrides: Any) -> AuthoritySettings:
    """Settings from options, then ``QFLARE_AUTHORITY_*`` variables, then defaults."""
    from pydantic import ValidationError

    from qflare.authority import AuthoritySettings
    from qflare.cli.faults import describe_validation_error

    try:
        env = AuthoritySettings()
        values = {name: getattr(env, name) for name in env.model_fields_set}
        values |= {k: v for k, v in {"dir": directory, **overrides}.items() if v is not None}
        return AuthoritySettings(**values)
    except ValidationError as exc:
        raise typer.BadParameter(describe_validation_error(exc)) from exc


def _fail(message: str) -> typer.Exit:
    return fail(message)


@contextlib.contextmanager
def _service(settings: AuthoritySettings) -> Iterator[AuthorityService]:
    from qflare.authority import AuthorityService
    from qflare.crypto import SystemRng

    try:
        service = AuthorityService.open(settings, clock=time.time, rng=SystemRng())
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    try:
        yield service
    finally:
        service.close()


@authority_app.command("init")
def init(directory: DirOpt = None) -> None:
    """Make the authority key pair (ML-DSA-65): authority.key (0600) and authority.pub."""
    from qflare.authority import AUTHORITY_KEY_FILE, AUTHORITY_PUB_FILE, init_authority
    from qflare.crypto import SystemRng

    settings = _settings(directory)
    try:
        keys = init_authority(settings.dir, SystemRng())
    except FileExistsError as exc:
        raise _fail(str(exc)) from exc
    out = _console()
    out.print(
        f"[green]wrote[/] {settings.dir / AUTHORITY_KEY_FILE} (0600) and {settings.dir / AUTHORITY_PUB_FILE}"
    )
    out.print(f"authority sha256: {keys.public.fingerprint.hex()}")
    out.print(
        f"[bold]{AUTHORITY_KEY_FILE} is the federation's trust root[/]: keep it offline or on the "
        "authority's own host; never give it to the aggregation server."
    )
    out.print(
        f"Give the server {AUTHORITY_PUB_FILE} (setting authority_key) and the URL of "
        f"`qflare authority serve --dir {settings.dir}` (setting authority_url)."
    )


@authority_app.command("serve")
def serve(
    directory: DirOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Bind port.")] = None,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            case_sensitive=False,
            help="JSON-lines log on stderr; per-request access log only at debug.",
        ),
    ] = "warning",
) -> None:
    """Serve POST /v1/certificates for the aggregation server to relay enrollments to."""
    import uvicorn

    from qflare.authority import AUTHORITY_KEY_FILE
    from qflare.authority.app import create_authority_app
    from qflare.logs import UVICORN_LOGGERS, configure_logging, uvicorn_log_options
    from qflare.server.tls import is_loopback

    settings = _settings(directory, host=host, port=port)
    if not (settings.dir / AUTHORITY_KEY_FILE).exists():
        raise _fail(f"no {AUTHORITY_KEY_FILE} in {settings.dir}: run `qflare authority init` first")
    if not is_loopback(settings.host):
        _console(stderr=True).print(
            f"[yellow]warning:[/] serving plain HTTP on {settings.host}: requests carry no secret "
            "and answers are signed, but put the authority behind TLS off loopback"
        )
    app = create_authority_app(settings)
    configure_logging(log_level, ("qflare", *UVICORN_LOGGERS))
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        server_header=False,
        **uvicorn_log_options(log_level),
    )


@token_app.command("create")
def token_create(
    directory: DirOpt = None,
    expires: Annotated[str, typer.Option(help="Lifetime: 30m, 1h, 2d (at most 30d).")] = "1h",
    label: Annotated[str, typer.Option(help="Free-form note (who the token is for).")] = "",
    count: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many tokens (one per line).")
    ] = 1,
) -> None:
    """Create single-use enrollment tokens and print them (shown only now; never stored).

    With --count N, N tokens are printed one per line (a fleet enrolled in one go); each is
    single-use and carries the same label and lifetime.
    """
    try:
        ttl = parse_duration(expires)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from exc
    made = []
    with _service(_settings(directory)) as service:
        try:
            made = [service.create_token(ttl, label) for _ in range(count)]
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    err = _console(stderr=True)
    for record, text in made:
        err.print(
            f"token [bold]{record.token_id}[/] expires {_when(record.expires_at)}; "
            "it is shown only once:"
        )
        typer.echo(text)


@token_app.command("list")
def token_list(directory: DirOpt = None) -> None:
    """List enrollment tokens (never their text)."""
    with _service(_settings(directory)) as service:
        rows = service.tokens()
    table = Table("id", "label", "created", "expires", "status", title="enrollment tokens")
    now = time.time()
    for row in rows:
        status = row.status(now)
        if status == "used":
            status = f"used by {row.device_id}"
        table.add_row(row.token_id, row.label, _when(row.created_at), _when(row.expires_at), status)
    _console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (from `qflare authority token list`).")],
    directory: DirOpt = None,
) -> None:
    """Revoke an unused enrollment token."""
    with _service(_settings(directory)) as service:
        done = service.revoke_token(token_id)
    if not done:
        raise _fail(f"no unused, unrevoked token {token_id}")
    _console().print(f"token {token_id} revoked")


def _describe(certificate: bytes) -> tuple[str, str]:
    from qflare.protocol.identity import IdentityError, parse_certificate

    try:
        body = parse_certificate(certificate)
    except IdentityError:
        return "?", "malformed"
    return body.scheme.value, hashlib.sha256(body.identity_pk).hexdigest()[:16]


@authority_app.command("certs")
def certs(directory: DirOpt = None) -> None:
    """List every device certificate the authority issued (serials have no gaps)."""
    with _service(_settings(directory)) as service:
        rows = service.certificates()
    table = Table(
        "serial", "device", "index", "scheme", "key sha256", "issued", "token", title="certificates"
    )
    for row in rows:
        scheme, fingerprint = _describe(row.certificate)
        table.add_row(
            str(row.serial),
            row.device_id,
            str(row.client_index),
            scheme,
            fingerprint,
            _when(row.issued_at),
            row.token_id,
        )
    _console().print(table)
