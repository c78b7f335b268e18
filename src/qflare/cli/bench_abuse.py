"""``qflare bench abuse``: honest rounds under a flood of bad requests from the same address."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qflare.cli.bench_output import emit_json


def register(bench_app: typer.Typer) -> None:
    """Add the ``abuse`` benchmark to the ``bench`` group."""

    @bench_app.command("abuse")
    def bench_abuse(
        nodes: Annotated[int, typer.Option(min=3, help="Honest nodes (the cohort).")] = 5,
        rounds: Annotated[int, typer.Option(min=1, help="Rounds the server runs.")] = 20,
        dim: Annotated[int, typer.Option(min=1, help="Model parameters.")] = 10_000,
        rate: Annotated[float, typer.Option(min=1, help="Bad requests per second.")] = 2000.0,
        connections: Annotated[int, typer.Option(min=1, help="Attacker connections.")] = 32,
        timeout: Annotated[
            float, typer.Option(min=10, help="Bound on the attacked phase, seconds.")
        ] = 300.0,
        output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    ) -> None:
        """Honest nodes' rounds while RATE bad requests/s arrive from their address (loopback)."""
        from qflare.bench.abuse import AbuseBenchConfig, run_abuse_bench

        cfg = AbuseBenchConfig(nodes, rounds, dim, rate, connections, timeout)
        with Console(stderr=True).status(
            f"{nodes} honest nodes, {rounds} rounds, {rate:g} bad requests/s from 127.0.0.1"
        ):
            result = run_abuse_bench(cfg)
        emit_json(result, output)
