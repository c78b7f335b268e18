"""``qflare bench server``: handshake and upload throughput, and many concurrent nodes over HTTP."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qflare.cli.bench_output import emit_json


def register(bench_app: typer.Typer) -> None:
    """Add the ``server`` benchmark to the ``bench`` group."""

    @bench_app.command("server")
    def bench_server(
        handshakes: Annotated[
            int, typer.Option(min=1, help="Handshakes to time (server side).")
        ] = 500,
        uploads: Annotated[
            int, typer.Option(min=1, help="Masked uploads to time (server side).")
        ] = 200,
        upload_dim: Annotated[
            int, typer.Option(min=1, help="Upload length (uint32 words).")
        ] = 100_000,
        nodes: Annotated[
            int, typer.Option(min=0, help="Concurrent nodes over HTTP (0 skips).")
        ] = 500,
        node_dim: Annotated[
            int, typer.Option(min=1, help="Model size of the concurrent round.")
        ] = 10_000,
        output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    ) -> None:
        """Server throughput (in-process, server side only) and an N-node round over loopback HTTP."""
        from qflare.bench.server_http import concurrent_round
        from qflare.bench.server_inproc import handshake_rate, upload_rate

        console = Console(stderr=True)
        with console.status("timing handshakes"):
            hs = handshake_rate(handshakes)
        with console.status("timing signed masked uploads"):
            up = upload_rate(uploads, upload_dim)
        result: dict[str, object] = {
            "benchmark": "server",
            "machine": platform.platform(),
            "handshakes": hs,
            "uploads": up,
        }
        if nodes > 0:
            with console.status(f"{nodes} concurrent nodes, one SecAgg+ round over HTTP"):
                result["concurrent_round"] = concurrent_round(nodes, node_dim)
        emit_json(result, output)
