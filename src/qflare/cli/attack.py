"""``qflare attack dlg``: gradient inversion against plain, quantised and masked uploads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qflare.fl import dlg_experiment, load_dataset, observe_plain
from qflare.fl.attack_experiment import DlgExperiment
from qflare.sim.report import plot_reconstructions
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
