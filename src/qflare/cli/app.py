"""The ``qflare`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from qflare.bench.secagg import SecAggBenchConfig, run_secagg_bench
from qflare.cli.demo import run_demo
from qflare.cli.settings import Settings
from qflare.protocol.graph import find_params

app = typer.Typer(
    help="QFLARE: secure federated learning.", no_args_is_help=True, add_completion=False
)
bench_app = typer.Typer(help="Benchmarks (JSON output).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
_STAGES = ["R0_ADVERTISE_KEYS", "R1_SHARE_KEYS", "R2_MASKED_INPUT", "R3_CONSISTENCY", "R4_UNMASK"]


@app.command()
def demo(
    clients: Annotated[int, typer.Option(help="Number of clients.")] = 20,
    dim: Annotated[int, typer.Option(help="Model size (floats per update).")] = 50_000,
    dropout: Annotated[float, typer.Option(help="Fraction of clients that drop out.")] = 0.2,
) -> None:
    """Run one secure-aggregation round in memory and show what happened."""
    settings = Settings()
    run_demo(settings, Console(), clients=clients, dim=dim, dropout=dropout)


@app.command()
def params(
    clients: Annotated[int, typer.Option(help="Number of clients n.")],
    corrupt: Annotated[float, typer.Option(help="Fraction of corrupt clients (gamma).")] = 0.05,
    dropout: Annotated[float, typer.Option(help="Fraction of dropouts (delta).")] = 0.1,
    security: Annotated[int, typer.Option(help="Statistical security bits.")] = 40,
) -> None:
    """Find the SecAgg+ neighbourhood size k and threshold t for a cohort."""
    p = find_params(clients, corrupt, dropout, security)
    typer.echo(
        json.dumps(
            {
                "n": clients,
                "k": p.k,
                "t": p.t,
                "privacy_failure": p.privacy_failure,
                "correctness_failure": p.correctness_failure,
            }
        )
    )


@bench_app.command("secagg")
def bench_secagg(
    clients: Annotated[int, typer.Option(help="Number of clients n.")] = 100,
    dim: Annotated[int, typer.Option(help="Update length d (float32 parameters).")] = 100_000,
    dropout: Annotated[float, typer.Option(help="Fraction of clients that drop.")] = 0.0,
    drop_stage: Annotated[
        str, typer.Option(help=f"Round at which they go silent: {', '.join(_STAGES)} (or R0..R4).")
    ] = "R2_MASKED_INPUT",
    k: Annotated[
        int | None, typer.Option(help="Shares per client (closed neighbourhood); default: finder.")
    ] = None,
    t: Annotated[int | None, typer.Option(help="Shamir threshold; default: finder.")] = None,
    modulus_bits: Annotated[int, typer.Option(help="Ring Z_2^b: 32 or 64.")] = 32,
    scheme: Annotated[str, typer.Option(help="mldsa65, ed25519 or hybrid.")] = "mldsa65",
    repeat: Annotated[int, typer.Option(help="Rounds to run (medians are reported).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Benchmark one SecAgg+ round in-process against the AES-CTR and numpy floors."""
    stage = next((s for s in _STAGES if drop_stage in (s, s[:2])), None)
    if stage is None:
        raise typer.BadParameter(f"--drop-stage must be one of {_STAGES} (or R0..R4)")
    drop_stage = stage
    cfg = SecAggBenchConfig(clients, dim, dropout, drop_stage, k, t, modulus_bits, scheme, repeat)
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
    ) as bar:
        task = bar.add_task("secagg round", total=5 * repeat)
        result = run_secagg_bench(
            cfg, progress=lambda s: bar.update(task, advance=1, description=s)
        )
    text = json.dumps(result, indent=2)
    if output is not None:
        output.write_text(text)
    typer.echo(text)


def main() -> None:
    """Console-script entry point."""
    app()
