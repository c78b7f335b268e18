"""``qflare demo``, ``simulate``, ``params``, ``attack dlg`` and ``attack poison``.

Every numeric option declares its range and every choice is a ``Literal``, so impossible input
stops at parsing (exit 2, one line naming the option) before any work starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from qflare.cli.options import (
    DatasetName,
    DemoProtocol,
    SimProtocol,
    StrategyName,
    check_attack,
    check_defence,
    check_partition,
)

attack_app = typer.Typer(
    help="Privacy attacks that show what the masks protect, and poisoning attacks against "
    "robust aggregation.",
    no_args_is_help=True,
)

Seed = Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed for split, model, sampling.")]
OutDir = Annotated[
    Path | None, typer.Option(help="Output folder (default: under $QFLARE_OUT_DIR).")
]
Partition = Annotated[
    str, typer.Option(parser=check_partition, help="iid, dirichlet:ALPHA or shards:K.")
]


def demo(
    nodes: Annotated[
        int, typer.Option(min=3, max=50, help="Node processes of the networked federation.")
    ] = 5,
    rounds: Annotated[int, typer.Option(min=0, help="Secure FL rounds over HTTPS (0: skip).")] = 8,
    explain: Annotated[
        bool, typer.Option(help="First explain one in-memory SecAgg+ round.")
    ] = True,
    out: OutDir = None,
    protocol: Annotated[
        DemoProtocol,
        typer.Option(
            help="secagg+ (masked sums) or enclave (uploads sealed to an attested, SIMULATED "
            "aggregation enclave that releases a robust aggregate)."
        ),
    ] = "secagg+",
) -> None:
    """The main job: a TLS server and enrolled node processes train MNIST with SecAgg+."""
    from qflare.cli.demo import run_demo
    from qflare.cli.netdemo import DemoPlan, run_network_demo
    from qflare.cli.settings import Settings

    settings = Settings()
    console = Console()
    if explain:
        run_demo(settings, console, clients=20, dim=50_000, dropout=0.2)
    if rounds > 0:
        plan = DemoPlan(
            nodes,
            rounds,
            out or settings.out_dir / "demo",
            settings.signature_scheme,
            protocol=protocol,
        )
        run_network_demo(console, plan)


def simulate(
    clients: Annotated[int, typer.Option(min=1, help="Number of clients.")] = 10,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 20,
    dataset: Annotated[
        DatasetName, typer.Option(help="mnist (5,000 real digits) or digits (sklearn 8x8).")
    ] = "mnist",
    partition: Partition = "dirichlet:0.5",
    protocol: Annotated[SimProtocol, typer.Option(help="Aggregation protocol.")] = "secagg+",
    dropout: Annotated[
        float,
        typer.Option(min=0.0, max=0.99, help="Fraction of sampled clients dropping each round."),
    ] = 0.0,
    strategy: Annotated[StrategyName, typer.Option(help="Server optimiser.")] = "fedavg",
    fraction: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Fraction of clients sampled per round.")
    ] = 1.0,
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    lr: Annotated[float, typer.Option(min=0.0, help="Local SGD learning rate (> 0).")] = 0.02,
    momentum: Annotated[float, typer.Option(min=0.0, max=1.0, help="Local SGD momentum.")] = 0.9,
    batch_size: Annotated[int, typer.Option(min=1, help="Local batch size.")] = 32,
    fedprox_mu: Annotated[
        float, typer.Option(min=0.0, help="FedProx proximal term (0: off).")
    ] = 0.0,
    seed: Seed = 0,
    processes: Annotated[
        int,
        typer.Option(
            min=1, max=64, help="Worker processes for local training (same model up to rounding)."
        ),
    ] = 1,
    compare_plain: Annotated[
        bool, typer.Option(help="Also run plain FedAvg with the same seed.")
    ] = False,
    out: OutDir = None,
) -> None:
    """Train a real model on real data across simulated clients (secure aggregation by default)."""
    from qflare.cli.settings import Settings
    from qflare.cli.simulate import SimulateOptions, prepare, run_simulation
    from qflare.sim.federated import FederatedConfig

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
        with Console(stderr=True).status("loading the data"):
            data = prepare(cfg, protocol, dropout)  # fails here, before any training
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    opts = SimulateOptions(
        protocol,
        dropout,
        compare_plain,
        out or settings.out_dir / "simulate",
        settings.signature_scheme,
    )
    run_simulation(Console(), cfg, opts, data)


def params(
    clients: Annotated[int, typer.Option(min=3, help="Number of clients n.")],
    corrupt: Annotated[
        float, typer.Option(min=0.0, max=0.49, help="Fraction of corrupt clients (gamma).")
    ] = 0.05,
    dropout: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Fraction of dropouts (delta).")
    ] = 0.1,
    security: Annotated[int, typer.Option(min=1, max=128, help="Statistical security bits.")] = 40,
) -> None:
    """Find the SecAgg+ neighbourhood size k and threshold t for a cohort."""
    from qflare.protocol.graph import find_params

    try:
        p = find_params(clients, corrupt, dropout, security)
    except ValueError as exc:  # in range, but no (k, t) meets both bounds
        raise typer.BadParameter(str(exc)) from None
    result = {
        "n": clients,
        "k": p.k,
        "t": p.t,
        "privacy_failure": p.privacy_failure,
        "correctness_failure": p.correctness_failure,
    }
    typer.echo(json.dumps(result))


@attack_app.command("dlg")
def attack_dlg(
    images: Annotated[
        int, typer.Option(min=1, max=1000, help="MNIST test images attacked (batch size 1).")
    ] = 5,
    iterations: Annotated[int, typer.Option(min=1, help="L-BFGS steps per image.")] = 50,
    method: Annotated[Literal["idlg", "dlg"], typer.Option(help="Attack variant.")] = "idlg",
    seed: Seed = 0,
    out: OutDir = None,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON summary here.")] = None,
) -> None:
    """Invert gradients from the plain update, the quantised update and the masked upload."""
    from qflare.cli.attack import run_dlg
    from qflare.cli.settings import Settings

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


def _malicious_fraction(value: float) -> float:
    if value >= 0.5:
        raise typer.BadParameter(f"{value} is not in the range 0<=x<0.5.")
    return value


@attack_app.command("poison")
def attack_poison(
    attack: Annotated[
        list[str],
        typer.Option(
            parser=check_attack,
            help="Attack (repeatable): sign-flip, scaling, gaussian, alie, ipm, label-flip, "
            "backdoor; all: every attack.",
        ),
    ] = ["alie"],  # noqa: B006 (Typer reads the default, never mutates it)
    malicious: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.5,
            callback=_malicious_fraction,
            help="Fraction of malicious clients, in [0, 0.5).",
        ),
    ] = 0.2,
    defence: Annotated[
        list[str],
        typer.Option(
            parser=check_defence,
            help="Robust aggregation rule (repeatable); all: every rule in qflare.fl.robust.",
        ),
    ] = ["all"],  # noqa: B006
    dataset: Annotated[
        DatasetName, typer.Option(help="mnist (5,000 real digits) or digits (sklearn 8x8).")
    ] = "mnist",
    clients: Annotated[int, typer.Option(min=3, max=1000, help="Number of clients.")] = 20,
    rounds: Annotated[int, typer.Option(min=1, max=1000, help="Federated rounds.")] = 20,
    partition: Partition = "dirichlet:0.5",
    seed: Seed = 0,
    jobs: Annotated[
        int, typer.Option(min=1, max=256, help="Runs in parallel processes (same results).")
    ] = 1,
    clean_defences: Annotated[
        bool, typer.Option(help="Also run every defence without attack (its own cost).")
    ] = True,
    output: Annotated[Path | None, typer.Option(help="Write the JSON results here.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG of accuracy per round per defence here.")
    ] = None,
) -> None:
    """Poison a federation (model or data attacks) and measure what each defence keeps."""
    from qflare.cli.attack import prepare_poison, run_poison_cli
    from qflare.sim.poison import PoisonSetup

    try:
        setup = PoisonSetup(
            dataset=dataset,
            num_clients=clients,
            rounds=rounds,
            partition=partition,
            seed=seed,
            malicious_fraction=malicious,
        )
        with Console(stderr=True).status("loading the data"):
            data = prepare_poison(setup, list(attack), defence)  # fails here, before training
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_poison_cli(
        Console(),
        setup,
        list(attack),
        defence,
        data,
        jobs=jobs,
        clean_defences=clean_defences,
        output=output,
        plot=plot,
    )


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``simulate`` and ``params`` to the ``qflare`` app."""
    app.command()(demo)
    app.command()(simulate)
    app.command()(params)
