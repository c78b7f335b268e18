"""``qflare bench``: the SecAgg+ round, accuracy parity, the report, and the other suites.

The benchmarks themselves live in :mod:`qflare.bench` and are imported inside each command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from qflare.cli.bench_abuse import register as register_bench_abuse
from qflare.cli.bench_chronos import register as register_bench_chronos
from qflare.cli.bench_enclave import register as register_bench_enclave
from qflare.cli.bench_output import emit_json
from qflare.cli.bench_robust import register as register_bench_robust
from qflare.cli.bench_server import register as register_bench_server
from qflare.cli.options import SchemeName, check_partition

bench_app = typer.Typer(help="Benchmarks (JSON output).", no_args_is_help=True)

DropStage = Literal[
    "R0_ADVERTISE_KEYS",
    "R1_SHARE_KEYS",
    "R2_MASKED_INPUT",
    "R3_CONSISTENCY",
    "R4_UNMASK",
    "R0",
    "R1",
    "R2",
    "R3",
    "R4",
]
_STAGES = [s for s in get_args(DropStage) if len(s) > 2]
OutputOpt = Annotated[Path | None, typer.Option(help="Also write the JSON here.")]


@bench_app.command("secagg")
def bench_secagg(
    clients: Annotated[int, typer.Option(min=2, help="Number of clients n.")] = 100,
    dim: Annotated[
        int, typer.Option(min=1, help="Update length d (float32 parameters).")
    ] = 100_000,
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Fraction of clients that drop.")
    ] = 0.0,
    drop_stage: Annotated[
        DropStage, typer.Option(help="Round at which they go silent (R0..R4 for short).")
    ] = "R2_MASKED_INPUT",
    k: Annotated[
        int | None,
        typer.Option(min=2, help="Shares per client (closed neighbourhood); default: finder."),
    ] = None,
    t: Annotated[int | None, typer.Option(min=1, help="Shamir threshold; default: finder.")] = None,
    modulus_bits: Annotated[Literal[32, 64], typer.Option(help="Ring Z_2^b.")] = 32,
    scheme: Annotated[SchemeName, typer.Option(help="Identity signatures.")] = "mldsa65",
    repeat: Annotated[int, typer.Option(min=1, help="Rounds to run (medians are reported).")] = 1,
    corrupt: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.49, help="Corrupt fraction of the clients' policy (and of the finder)."
        ),
    ] = 0.05,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    output: OutputOpt = None,
) -> None:
    """Benchmark one SecAgg+ round in-process against the AES-CTR and numpy floors."""
    from qflare.bench.secagg import SecAggBenchConfig, run_secagg_bench
    from qflare.protocol.errors import ProtocolError

    stage = next(s for s in _STAGES if drop_stage in (s, s[:2]))
    cfg = SecAggBenchConfig(
        clients, dim, dropout, stage, k, t, modulus_bits, scheme, repeat, corrupt=corrupt
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=as_json,
    ) as bar:
        task = bar.add_task("secagg round", total=6 * repeat)
        try:
            result = run_secagg_bench(
                cfg, progress=lambda s: bar.update(task, advance=1, description=s)
            )
        except (ProtocolError, ValueError) as exc:
            raise typer.BadParameter(str(exc).split("] ", 1)[-1]) from None
    emit_json(result, output)


@bench_app.command("accuracy")
def bench_accuracy(
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 20,
    clients: Annotated[int, typer.Option(min=3, help="Clients.")] = 10,
    partition: Annotated[
        str, typer.Option(parser=check_partition, help="iid, dirichlet:ALPHA or shards:K.")
    ] = "dirichlet:0.5",
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed.")] = 0,
    output: OutputOpt = None,
) -> None:
    """Accuracy parity: SecAgg+ FedAvg vs plain FedAvg on MNIST-5k, same seed."""
    from qflare.cli.settings import Settings
    from qflare.cli.simulate import accuracy_parity, prepare
    from qflare.protocol.names import ProtocolName
    from qflare.sim.federated import FederatedConfig

    cfg = FederatedConfig(
        dataset="mnist",
        num_clients=clients,
        rounds=rounds,
        partition=partition,
        lr=0.02,
        momentum=0.9,
        batch_size=32,
        seed=seed,
    )
    console = Console(stderr=True)
    try:
        with console.status("loading the data"):
            data = prepare(cfg, ProtocolName.SECAGG_PLUS, 0.0)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with console.status("training secure and plain federations"):
        result = accuracy_parity(cfg, Settings().signature_scheme, data)
    emit_json(result, output)


@bench_app.command("startup")
def bench_startup(
    repeat: Annotated[int, typer.Option(min=1, max=100, help="Runs per case (medians).")] = 11,
    output: OutputOpt = None,
) -> None:
    """Start-up time of `qflare --help`, `--version` and `server --help` (fresh processes)."""
    from qflare.bench.cli_startup import run_startup_bench

    with Progress(TextColumn("{task.description}"), console=Console(stderr=True)) as bar:
        task = bar.add_task("cli start-up")
        result = run_startup_bench(repeat, progress=lambda s: bar.update(task, description=s))
    emit_json(result, output)


@bench_app.command("report")
def bench_report(
    bench_dir: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="Folder of benchmark JSON files.")
    ] = Path("docs/bench"),
) -> None:
    """Print the markdown table of measured figures against the targets."""
    from qflare.bench.report import render

    typer.echo(render(bench_dir))


register_bench_server(bench_app)
register_bench_chronos(bench_app)
register_bench_abuse(bench_app)
register_bench_robust(bench_app)
register_bench_enclave(bench_app)
