"""``qflare server settings``: every server setting, generated from ``ServerSettings`` itself."""

from __future__ import annotations

from typing import Annotated

import typer

OPENAPI_NOTE = (
    "All settings: `qflare server settings` (each is a --config key and a QFLARE_ variable). "
    "The running server describes its HTTP API at /docs (OpenAPI: /openapi.json)."
)


def settings_cmd(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the README's markdown table instead.")
    ] = False,
) -> None:
    """List every server setting: type and bounds, default, QFLARE_ variable, description.

    Settings come from command-line options, then QFLARE_* environment variables, then the
    --config file (TOML or JSON, keys named like the settings), then these defaults.
    """
    from rich.console import Console
    from rich.table import Table

    from qflare.cli.settings_doc import describe_settings, render_markdown
    from qflare.server.settings import ServerSettings

    docs = describe_settings(ServerSettings)
    if markdown:
        typer.echo(render_markdown(docs), nl=False)
        return
    table = Table("setting", "type", "default", "variable", "description", title="server settings")
    for doc in docs:
        table.add_row(doc.name, doc.type, doc.default, doc.env, doc.description)
    Console().print(table)
