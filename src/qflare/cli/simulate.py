"""``qflare simulate``: a federated-learning simulation with secure aggregation by default."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qflare.cli.options import PLAIN
from qflare.cli.settings import PROTOCOLS
from qflare.crypto import SignatureScheme
from qflare.fl import Aggregator, Dataset, PlainAggregator, load_dataset, partition
from qflare.protocol.names import ProtocolName
from qflare.sim.federated import FederatedConfig, RoundMetrics, SimulationResult, run_federated
from qflare.sim.report import plot_accuracy, write_metrics_json
from qflare.sim.secure import SecAggAggregator


@dataclass(frozen=True)
class SimulateOptions:
    """What the CLI asked for, beyond the federation itself."""

    protocol: str = "secagg+"
    dropout: float = 0.0
    compare_plain: bool = False
    out_dir: Path = Path("out/simulate")
    scheme: str = "mldsa65"


def make_aggregator(protocol: str, dropout: float, scheme: str, seed: int) -> Aggregator:
    """Build the aggregator a protocol name stands for."""
    if protocol == PLAIN:
        return PlainAggregator(dropout=dropout, seed=seed)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")
    return SecAggAggregator(
        protocol=ProtocolName(protocol),
        dropout=dropout,
        scheme=SignatureScheme(scheme),
        seed=seed,
    )


def cohort_size(cfg: FederatedConfig) -> int:
    """Clients sampled per round (as :func:`qflare.fl.sample_clients` draws them)."""
    wanted = max(cfg.min_fit_clients, round(cfg.fraction_fit * cfg.num_clients))
    return min(cfg.num_clients, wanted)


def prepare(cfg: FederatedConfig, protocol: str, dropout: float) -> Dataset:
    """Load the data and check that the federation can be built, before any training.

    Raises:
        ValueError: no secure round parameters for the cohort, or too few examples for the
            clients of the partition.
    """
    agg = make_aggregator(protocol, dropout, "ed25519", cfg.seed)
    if isinstance(agg, SecAggAggregator):
        n = cohort_size(cfg)
        if n < 3:
            raise ValueError(f"secure aggregation needs at least 3 clients per round, not {n}")
        try:
            agg.round_parameters(n)
        except ValueError as exc:
            raise ValueError(f"{exc}: sample more clients or plan for fewer dropouts") from exc
    data = load_dataset(cfg.dataset, cfg.seed)
    labels = data.y_train.numpy()
    partition(labels, cfg.num_clients, cfg.partition, cfg.seed, min_samples=cfg.min_partition_size)
    return data


def _run(
    console: Console, label: str, cfg: FederatedConfig, agg: Aggregator, data: Dataset
) -> SimulationResult:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"{label}: round 0", total=cfg.rounds)

        def step(round_id: int, m: RoundMetrics) -> None:
            bar.update(
                task, advance=1, description=f"{label}: round {round_id} acc {m.accuracy:.3f}"
            )

        return run_federated(cfg, agg, progress=step, data=data)


def _table(console: Console, runs: dict[str, SimulationResult]) -> None:
    table = Table(title="test accuracy / loss per round")
    table.add_column("round", justify="right")
    for label in runs:
        table.add_column(f"{label} acc", justify="right")
        table.add_column(f"{label} loss", justify="right")
        table.add_column(f"{label} clients", justify="right")
    first = next(iter(runs.values()))
    for i, row in enumerate(first.history):
        cells = [str(row.round_id)]
        for res in runs.values():
            m = res.history[i]
            cells += [f"{m.accuracy:.4f}", f"{m.loss:.4f}", f"{m.participants}/{m.sampled}"]
        table.add_row(*cells)
    console.print(table)


def run_simulation(
    console: Console, cfg: FederatedConfig, opts: SimulateOptions, data: Dataset | None = None
) -> dict[str, SimulationResult]:
    """Run the simulation (and the plain baseline if asked), print, and write JSON and PNG.

    Args:
        console: Where progress and results go.
        cfg: The federation.
        opts: Protocol, dropouts, baseline, output folder.
        data: The dataset from :func:`prepare` (loaded here if ``None``).
    """
    data = data if data is not None else load_dataset(cfg.dataset, cfg.seed)
    agg = make_aggregator(opts.protocol, opts.dropout, opts.scheme, cfg.seed)
    runs = {opts.protocol: _run(console, opts.protocol, cfg, agg, data)}
    if opts.compare_plain and opts.protocol != PLAIN:
        plain = make_aggregator(PLAIN, opts.dropout, opts.scheme, cfg.seed)
        runs[PLAIN] = _run(console, PLAIN, cfg, plain, data)
    _table(console, runs)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = write_metrics_json(
        opts.out_dir / "metrics.json", runs, extra={"dropout": opts.dropout}
    )
    plot = plot_accuracy(
        opts.out_dir / "accuracy.png",
        runs,
        title=f"{cfg.dataset}, {cfg.num_clients} clients, {cfg.partition}",
    )
    for label, res in runs.items():
        console.print(
            f"[bold]{label}[/bold]: final test accuracy {res.final_accuracy:.4f} after {cfg.rounds} rounds ({res.seconds:.1f} s)"
        )
    console.print(f"metrics: {metrics}\nplot:    {plot}")
    return runs


def accuracy_parity(
    cfg: FederatedConfig, scheme: str, data: Dataset | None = None
) -> dict[str, object]:
    """The accuracy benchmark: secure (SecAgg+) vs plain FedAvg, same seed, no dropouts."""
    secure = run_federated(
        cfg, make_aggregator(ProtocolName.SECAGG_PLUS, 0.0, scheme, cfg.seed), data=data
    )
    plain = run_federated(cfg, make_aggregator(PLAIN, 0.0, scheme, cfg.seed), data=data)
    gap = (plain.final_accuracy - secure.final_accuracy) * 100
    return {
        "benchmark": "accuracy",
        "config": json.loads(json.dumps(secure.to_dict()["config"], default=str)),
        "secure_final_accuracy": secure.final_accuracy,
        "plain_final_accuracy": plain.final_accuracy,
        "gap_percentage_points": gap,
        "secure_curve": [r.accuracy for r in secure.history],
        "plain_curve": [r.accuracy for r in plain.history],
        "secure_seconds": secure.seconds,
        "plain_seconds": plain.seconds,
        "targets": {
            "gap_within_0_5_pp": abs(gap) <= 0.5,
            "secure_at_least_90_percent": secure.final_accuracy >= 0.90,
        },
    }
