"""``qflare bench enclave``: aggregation inside the simulated server enclave."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qflare.cli.bench_output import emit_json, stages


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
        with stages("starting the enclave", quiet=as_json) as say:
            result = run_enclave_bench(cfg, progress=say)
        emit_json(result, output)
