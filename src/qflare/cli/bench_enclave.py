"""``qflare bench enclave``: aggregation inside the simulated server enclave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn


def register(bench_app: typer.Typer) -> None:
    """Add the ``enclave`` benchmark to the ``bench`` group."""

    @bench_app.command("enclave")
    def bench_enclave(
        clients: Annotated[int, typer.Option(min=3, help="Updates per FINISH round n.")] = 100,
        dim: Annotated[int, typer.Option(min=1, help="Update length d at FINISH.")] = 1_000_000,
        outliers: Annotated[
            float, typer.Option(min=0.0, max=0.49, help="Fraction of flipped x10 updates.")
        ] = 0.05,
        open_uploads: Annotated[
            int, typer.Option(min=2, help="Uploads timed for the open rate.")
        ] = 200,
        open_dim: Annotated[int, typer.Option(min=1, help="Length d for the open rate.")] = 100_000,
        seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
        output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    ) -> None:
        """Per-upload open rate (d=100k, ML-DSA-65) and FINISH time per defence (n=100, d=1M)."""
        from qflare.bench.enclave import EnclaveBenchConfig, run_enclave_bench

        cfg = EnclaveBenchConfig(
            clients=clients,
            dim=dim,
            outliers=outliers,
            open_uploads=open_uploads,
            open_dim=open_dim,
            seed=seed,
        )
        with Progress(
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=as_json,
        ) as bar:
            task = bar.add_task("starting the enclave")
            result = run_enclave_bench(cfg, progress=lambda s: bar.update(task, description=s))
        text = json.dumps(result, indent=2)
        if output is not None:
            output.write_text(text)
        typer.echo(text)
