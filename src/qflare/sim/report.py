"""Write simulation and attack results: metrics JSON and PNG plots.

Plots use matplotlib's object API with the Agg canvas directly (no ``pyplot``), so nothing
global is configured and it works headless.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qflare.fl import DlgExperiment
from qflare.sim.federated import SimulationResult

__all__ = ["plot_accuracy", "plot_reconstructions", "write_metrics_json"]


def _json_safe(value: object) -> object:
    """Replace non-finite floats (invalid JSON) by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_metrics_json(
    path: str | Path,
    runs: Mapping[str, SimulationResult],
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write labelled runs (e.g. ``{"secure": ..., "plain": ...}``) as one JSON document.

    Args:
        path: Output file; parent directories are created.
        runs: Label -> simulation result.
        extra: Additional top-level entries (e.g. attack summaries, versions).

    Returns:
        The written path.
    """
    document: dict[str, object] = {"runs": {label: r.to_dict() for label, r in runs.items()}}
    document.update(extra or {})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n")
    return out


def plot_accuracy(
    path: str | Path, runs: Mapping[str, SimulationResult], *, title: str | None = None
) -> Path:
    """Plot test accuracy per round, one curve per labelled run.

    Args:
        path: Output PNG; parent directories are created.
        runs: Label -> simulation result (e.g. secure vs plain).
        title: Figure title; defaults to the first run's dataset and strategy.

    Returns:
        The written path.
    """
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    styles = ("-o", "--s", ":^", "-.d")
    for i, (label, result) in enumerate(runs.items()):
        rounds = [m.round_id for m in result.history]
        accuracy = [100.0 * m.accuracy for m in result.history]
        axes.plot(rounds, accuracy, styles[i % len(styles)], label=label, markersize=4)
    first = next(iter(runs.values()), None)
    if title is None and first is not None:
        cfg = first.config
        title = f"{cfg.dataset}: {cfg.strategy}, {cfg.num_clients} clients, {cfg.partition}"
    axes.set(xlabel="round", ylabel="test accuracy (%)", title=title or "", ylim=(0, 100))
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out


def plot_reconstructions(path: str | Path, experiments: Mapping[str, DlgExperiment]) -> Path:
    """Show the private images and each observer's reconstruction in a grid.

    The first row holds the true images (from the first experiment); each further row one
    experiment, titled with its PSNR. All experiments should attack the same images.

    Args:
        path: Output PNG; parent directories are created.
        experiments: Label -> experiment (e.g. ``plain``, ``masked``).

    Returns:
        The written path.
    """
    rows = [("private", next(iter(experiments.values())))] if experiments else []
    rows += list(experiments.items())
    cols = max((len(e.trials) for _, e in rows), default=1)
    figure = Figure(figsize=(1.6 * cols, 1.8 * max(len(rows), 1)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(max(len(rows), 1), cols, squeeze=False)
    for r, (label, experiment) in enumerate(rows):
        for c, trial in enumerate(experiment.trials):
            image = trial.truth if r == 0 else trial.result.image
            axes = grid[r][c]
            low, high = float(trial.truth.min()), float(trial.truth.max())
            axes.imshow(np.nan_to_num(image[0]), cmap="gray", vmin=low, vmax=high)
            caption = f"y={trial.true_label}" if r == 0 else f"{trial.metrics.psnr_db:.1f} dB"
            axes.set_title(caption, fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
        grid[r][0].set_ylabel(label, fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out
