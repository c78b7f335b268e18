"""``qflare attack dlg`` and ``qflare attack poison``.

``dlg``: gradient inversion against plain, quantised and masked uploads. ``poison``: model and
data poisoning against the robust aggregation rules of :mod:`qflare.fl.robust`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qflare.fl import Dataset, dlg_experiment, load_dataset, observe_plain, partition
from qflare.fl.attack_experiment import DlgExperiment
from qflare.sim.poison import PoisonSetup, RunOutcome, plan_runs, plot_poison, run_poison
from qflare.sim.report import _json_safe, plot_reconstructions
from qflare.sim.secure import attack_observers


def run_dlg(
    console: Console, *, images: int, iterations: int, method: str, seed: int, out_dir: Path
) -> dict[str, Any]:
    """Attack ``images`` MNIST digits (batch size 1) through three observers; save a grid PNG."""
    data = load_dataset("mnist", seed)
    quantised, masked = attack_observers(seed=seed)
    observers = {"plain": observe_plain, "quantised": quantised, "masked": masked}
    results: dict[str, DlgExperiment] = {}
    for name, observe in observers.items():
        with console.status(
            f"attacking the {name} update ({images} images x {iterations} L-BFGS steps)"
        ):
            results[name] = dlg_experiment(
                dataset=data,
                num_images=images,
                method=method,  # type: ignore[arg-type]
                iterations=iterations,
                seed=seed,
                observe=observe,
                observation=name,
            )
    table = Table(title=f"{method.upper()} on MNIST, LeNet (sigmoid), batch size 1")
    for col in ("observed", "mean PSNR dB", "median PSNR dB", "mean MSE", "label accuracy"):
        table.add_column(col, justify="right")
    for name, exp in results.items():
        s = exp.summary()
        table.add_row(
            name,
            f"{s['mean_psnr_db']:.1f}",
            f"{s['median_psnr_db']:.1f}",
            f"{s['mean_mse']:.4g}",
            f"{s['label_accuracy']:.2f}",
        )
    console.print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = plot_reconstructions(out_dir / "dlg_grid.png", results)
    console.print(f"image grid (truth | plain | quantised | masked): {grid}")
    return {
        "benchmark": "dlg",
        "results": {k: v.summary() for k, v in results.items()},
        "grid": str(grid),
    }


def prepare_poison(setup: PoisonSetup, attacks: list[str], defences: list[str]) -> Dataset:
    """Check the grid and the split before any training; return the loaded dataset.

    Raises:
        ValueError: Unknown names, or a federation the dataset cannot split.
    """
    plan_runs(attacks, defences)
    data = load_dataset(setup.dataset, setup.seed)
    config = setup.federated()
    partition(
        data.y_train.numpy(),
        config.num_clients,
        config.partition,
        config.seed,
        min_samples=config.min_partition_size,
    )
    return data


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None or value != value else format(value, fmt)


def run_poison_cli(
    console: Console,
    setup: PoisonSetup,
    attacks: list[str],
    defences: list[str],
    data: Dataset,
    *,
    jobs: int,
    clean_defences: bool,
    output: Path | None,
    plot: Path | None,
) -> dict[str, Any]:
    """Run the poisoning grid with a progress bar, print the table, write JSON and PNG."""
    specs = plan_runs(attacks, defences, clean_defences=clean_defences)
    malicious = setup.malicious
    console.print(
        f"{setup.dataset}, {setup.num_clients} clients, {setup.partition}, {setup.rounds} rounds;"
        f" malicious clients {list(malicious)} ({len(malicious)}); {len(specs)} runs, {jobs} jobs"
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("poisoning runs", total=len(specs))

        def step(outcome: RunOutcome) -> None:
            label = f"{outcome.attack or 'clean'}/{outcome.defence}"
            bar.update(task, advance=1, description=f"{label}: acc {outcome.final_accuracy:.3f}")

        report = run_poison(
            setup,
            attacks,
            defences,
            jobs=jobs,
            clean_defences=clean_defences,
            data=data,
            progress=step,
        )
    clean = report.clean.final_accuracy
    table = Table(
        title=f"poisoning: {setup.dataset}, {len(malicious)}/{setup.num_clients} malicious, "
        f"{setup.partition}, {setup.rounds} rounds (clean FedAvg {clean:.3f})"
    )
    for col in ("attack", "defence"):
        table.add_column(col)
    for col in ("final acc", "Δ vs clean", "backdoor ASR", "rejected mal/hon"):
        table.add_column(col, justify="right")
    table.add_row(
        "clean",
        "fedavg",
        f"{clean:.3f}",
        "-",
        _cell(report.clean.backdoor_asr, ".3f"),
        "-",
    )
    for run in (*report.clean_defences, *report.runs):
        table.add_row(
            run.attack or "clean",
            run.defence,
            f"{run.final_accuracy:.3f}",
            f"{run.final_accuracy - clean:+.3f}",
            _cell(run.backdoor_asr, ".3f"),
            f"{sum(run.rejected_malicious)}/{sum(run.rejected_honest)}",
        )
    console.print(table)
    document = report.to_dict()
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n")
        console.print(f"results: {output}")
    if plot is not None:
        console.print(f"plot: {plot_poison(plot, report)}")
    return document
