"""``qflare bench robust``: every robust aggregation rule timed on one large round."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qflare.cli.bench_output import emit_json, stages


def register(bench_app: typer.Typer) -> None:
    """Add the ``robust`` benchmark to the ``bench`` group."""

    @bench_app.command("robust")
    def bench_robust(
        clients: Annotated[int, typer.Option(min=3, help="Updates per round n.")] = 100,
        dim: Annotated[
            int, typer.Option(min=1, help="Update length d (float32 parameters).")
        ] = 1_000_000,
        outliers: Annotated[
            float, typer.Option(min=0.0, max=0.49, help="Fraction of flipped x10 updates.")
        ] = 0.05,
        repeat: Annotated[int, typer.Option(min=1, help="Runs per defence (medians).")] = 3,
        seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
        output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
    ) -> None:
        """Time each robust aggregation rule on n random float32 updates with a few outliers."""
        from qflare.bench.robust import RobustBenchConfig, run_robust_bench

        cfg = RobustBenchConfig(clients, dim, outliers, repeat, seed)
        with stages("generating the round", quiet=as_json) as say:
            result = run_robust_bench(cfg, progress=say)
        emit_json(result, output)
