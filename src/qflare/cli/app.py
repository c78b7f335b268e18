"""The ``qflare`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import OperationalError

from qflare.bench.report import render
from qflare.cli.authority_cmds import authority_app
from qflare.cli.bench_chronos import register as register_bench_chronos
from qflare.cli.bench_server import register as register_bench_server
from qflare.cli.ledger_cmds import ledger_app
from qflare.cli.node_cmds import node_app
from qflare.cli.server_cmds import register as register_server_commands
from qflare.cli.settings import PROTOCOLS, Settings
from qflare.cli.tee_cmds import tee_app
from qflare.cli.witness_cmds import witness_app
from qflare.protocol.errors import ProtocolError
from qflare.protocol.graph import find_params
from qflare.store.db import DatabaseNotWritable, describe_database_error

app = typer.Typer(
    help="QFLARE: secure federated learning.", no_args_is_help=True, add_completion=False
)
bench_app = typer.Typer(help="Benchmarks (JSON output).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
attack_app = typer.Typer(
    help="Privacy attacks that show what the masks protect.", no_args_is_help=True
)
app.add_typer(attack_app, name="attack")
register_bench_server(bench_app)
register_bench_chronos(bench_app)
register_server_commands(app)
app.add_typer(node_app, name="node")
app.add_typer(authority_app, name="authority")
app.add_typer(ledger_app, name="ledger")
app.add_typer(witness_app, name="witness")
app.add_typer(tee_app, name="tee")
_STAGES = ["R0_ADVERTISE_KEYS", "R1_SHARE_KEYS", "R2_MASKED_INPUT", "R3_CONSISTENCY", "R4_UNMASK"]


@app.command()
def demo(
    nodes: Annotated[int, typer.Option(help="Node processes of the networked federation.")] = 5,
    rounds: Annotated[int, typer.Option(help="Secure FL rounds over HTTPS (0: skip).")] = 8,
    explain: Annotated[
        bool, typer.Option(help="First explain one in-memory SecAgg+ round.")
    ] = True,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: $QFLARE_OUT_DIR/demo).")
    ] = None,
) -> None:
    """The main job: a TLS server and enrolled node processes train MNIST with SecAgg+."""
    from qflare.cli.demo import run_demo
    from qflare.cli.netdemo import DemoPlan, run_network_demo

    settings = Settings()
    console = Console()
    if explain:
        run_demo(settings, console, clients=20, dim=50_000, dropout=0.2)
    if rounds > 0:
        plan = DemoPlan(nodes, rounds, out or settings.out_dir / "demo", settings.signature_scheme)
        run_network_demo(console, plan)


@app.command()
def simulate(
    clients: Annotated[int, typer.Option(help="Number of clients.")] = 10,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 20,
    dataset: Annotated[
        str, typer.Option(help="mnist (5,000 real digits) or digits (sklearn 8x8).")
    ] = "mnist",
    partition: Annotated[
        str, typer.Option(help="iid, dirichlet:ALPHA or shards:K.")
    ] = "dirichlet:0.5",
    protocol: Annotated[
        str, typer.Option(help=f"Aggregation: {', '.join(PROTOCOLS)}.")
    ] = "secagg+",
    dropout: Annotated[
        float, typer.Option(help="Fraction of sampled clients dropping each round.")
    ] = 0.0,
    strategy: Annotated[
        str, typer.Option(help="fedavg, fedadam, fedyogi or fedadagrad.")
    ] = "fedavg",
    fraction: Annotated[float, typer.Option(help="Fraction of clients sampled per round.")] = 1.0,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    lr: Annotated[float, typer.Option(help="Local SGD learning rate.")] = 0.02,
    momentum: Annotated[float, typer.Option(help="Local SGD momentum.")] = 0.9,
    batch_size: Annotated[int, typer.Option(help="Local batch size.")] = 32,
    fedprox_mu: Annotated[float, typer.Option(help="FedProx proximal term (0: off).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for split, model, sampling.")] = 0,
    processes: Annotated[
        int,
        typer.Option(help="Worker processes for local training (same model up to float rounding)."),
    ] = 1,
    compare_plain: Annotated[
        bool, typer.Option(help="Also run plain FedAvg with the same seed.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: $QFLARE_OUT_DIR/simulate).")
    ] = None,
) -> None:
    """Train a real model on real data across simulated clients (secure aggregation by default)."""
    from qflare.cli.simulate import SimulateOptions, run_simulation
    from qflare.sim.federated import FederatedConfig

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"--protocol must be one of {PROTOCOLS}")
    settings = Settings()
    try:
        cfg = FederatedConfig(
            dataset=dataset,
            num_clients=clients,
            rounds=rounds,
            partition=partition,
            strategy=strategy,
            fraction_fit=fraction,
            local_epochs=local_epochs,
            lr=lr,
            momentum=momentum,
            batch_size=batch_size,
            fedprox_mu=fedprox_mu,
            seed=seed,
            processes=processes,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    opts = SimulateOptions(
        protocol,
        dropout,
        compare_plain,
        out or settings.out_dir / "simulate",
        settings.signature_scheme,
    )
    run_simulation(Console(), cfg, opts)


@attack_app.command("dlg")
def attack_dlg(
    images: Annotated[int, typer.Option(help="MNIST test images attacked (batch size 1).")] = 5,
    iterations: Annotated[int, typer.Option(help="L-BFGS steps per image.")] = 50,
    method: Annotated[str, typer.Option(help="idlg or dlg.")] = "idlg",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: $QFLARE_OUT_DIR/attack).")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON summary here.")] = None,
) -> None:
    """Invert gradients from the plain update, the quantised update and the masked upload."""
    from qflare.cli.attack import run_dlg

    if method not in ("idlg", "dlg"):
        raise typer.BadParameter("--method must be idlg or dlg")
    settings = Settings()
    result = run_dlg(
        Console(),
        images=images,
        iterations=iterations,
        method=method,
        seed=seed,
        out_dir=out or settings.out_dir / "attack",
    )
    if output is not None:
        output.write_text(json.dumps(result, indent=2))


@bench_app.command("accuracy")
def bench_accuracy(
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 20,
    clients: Annotated[int, typer.Option(help="Clients.")] = 10,
    partition: Annotated[str, typer.Option(help="Partition spec.")] = "dirichlet:0.5",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Accuracy parity: SecAgg+ FedAvg vs plain FedAvg on MNIST-5k, same seed."""
    from qflare.cli.simulate import accuracy_parity
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
    with Console(stderr=True).status("training secure and plain federations"):
        result = accuracy_parity(cfg, Settings().signature_scheme)
    text = json.dumps(result, indent=2)
    if output is not None:
        output.write_text(text)
    typer.echo(text)


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
    corrupt: Annotated[
        float,
        typer.Option(help="Corrupt fraction of the clients' policy (and of the finder)."),
    ] = 0.05,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON here.")] = None,
) -> None:
    """Benchmark one SecAgg+ round in-process against the AES-CTR and numpy floors."""
    from qflare.bench.secagg import SecAggBenchConfig, run_secagg_bench

    stage = next((s for s in _STAGES if drop_stage in (s, s[:2])), None)
    if stage is None:
        raise typer.BadParameter(f"--drop-stage must be one of {_STAGES} (or R0..R4)")
    drop_stage = stage
    cfg = SecAggBenchConfig(
        clients, dim, dropout, drop_stage, k, t, modulus_bits, scheme, repeat, corrupt=corrupt
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
    ) as bar:
        task = bar.add_task("secagg round", total=6 * repeat)
        try:
            result = run_secagg_bench(
                cfg, progress=lambda s: bar.update(task, advance=1, description=s)
            )
        except ProtocolError as exc:
            raise typer.BadParameter(str(exc).split("] ", 1)[-1]) from None
    text = json.dumps(result, indent=2)
    if output is not None:
        output.write_text(text)
    typer.echo(text)


@bench_app.command("report")
def bench_report(
    bench_dir: Annotated[Path, typer.Option(help="Folder of benchmark JSON files.")] = Path(
        "docs/bench"
    ),
) -> None:
    """Print the markdown table of measured figures against the targets."""
    typer.echo(render(bench_dir))


def main() -> None:
    """Console-script entry point.

    A database that refuses a command (read-only files, a full disk, an unreachable server)
    is reported in one line, exit status 1, instead of a traceback.
    """
    try:
        app()
    except (OperationalError, DatabaseNotWritable) as exc:
        why = (
            str(exc)
            if isinstance(exc, DatabaseNotWritable)
            else f"the database refused the command: {describe_database_error(exc)}"
        )
        typer.secho(f"error: {why}", err=True, fg="red")
        raise SystemExit(1) from None
