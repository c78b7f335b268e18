"""Poisoning experiments: attacks against robust aggregation in the simulator.

One experiment fixes a federation (:class:`PoisonSetup`: dataset, clients, rounds, partition,
seed and the fraction of malicious clients) and runs the clean baseline (no attack, FedAvg),
optionally every other defence without attack (what the rule costs on its own), then every
(attack, defence) pair. Every run records the test accuracy per round, the
backdoor attack success rate where a backdoor is planted, and how many malicious and honest
updates the defence rejected each round.

The malicious clients are drawn once from the seed and every client trains every round
(``fraction_fit = 1``), so the malicious ones always participate. Runs are independent and
seeded, so :func:`run_poison` gives the same numbers (up to the wall-clock ``seconds``) for
any number of parallel ``jobs``.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from qflare.fl import (
    AggregateResult,
    Aggregator,
    Dataset,
    TorchClient,
    Update,
    build_model,
    build_strategy,
    default_model_name,
    evaluate_batches,
    get_flat,
    join_flat,
    load_dataset,
    split_flat,
    torch_threads,
)
from qflare.fl.local import client_loader, fit_config
from qflare.fl.poison import (
    ATTACKS,
    BackdoorAttack,
    ClientPoison,
    PoisonedAggregator,
    make_attack,
)
from qflare.fl.robust import DEFENCES, RobustAggregator, make_defence
from qflare.sim.federated import FederatedConfig, run_federated

__all__ = [
    "ROOT_DEFENCES",
    "PoisonReport",
    "PoisonSetup",
    "RunOutcome",
    "RunSpec",
    "plan_runs",
    "plot_poison",
    "run_one",
    "run_poison",
]

ROOT_DEFENCES = frozenset({"fltrust"})
"""Defences that get the server's own update on a small clean root dataset as reference."""

Float64Vector = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PoisonSetup:
    """The federation every run of an experiment shares.

    Attributes:
        dataset: ``"digits"`` or ``"mnist"``.
        num_clients: Clients (all train every round).
        rounds: Federated rounds.
        partition: ``"iid"``, ``"dirichlet:<alpha>"`` or ``"shards:<k>"``.
        seed: Seeds the federation, the choice of malicious clients and the attacks.
        malicious_fraction: Fraction of malicious clients, in ``[0, 0.5)``; the count is
            ``floor(fraction * num_clients)``.
        lr: Local SGD learning rate.
        momentum: Local SGD momentum.
        batch_size: Local mini-batch size.
        local_epochs: Local passes per round.
        root_size: Examples in the server's clean root dataset (FLTrust's reference).
    """

    dataset: str = "digits"
    num_clients: int = 10
    rounds: int = 5
    partition: str = "iid"
    seed: int = 0
    malicious_fraction: float = 0.2
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 16
    local_epochs: int = 1
    root_size: int = 100

    def __post_init__(self) -> None:
        if not 0.0 <= self.malicious_fraction < 0.5:
            raise ValueError(
                f"malicious fraction must lie in [0, 0.5), got {self.malicious_fraction}"
            )
        if self.root_size < 1:
            raise ValueError(f"root_size must be >= 1, got {self.root_size}")
        self.federated()  # validates the rest

    @property
    def malicious(self) -> tuple[int, ...]:
        """The malicious client ids (sorted), drawn from the seed."""
        count = math.floor(self.malicious_fraction * self.num_clients + 1e-9)
        rng = np.random.default_rng([self.seed, 0xBAD])
        return tuple(sorted(int(c) for c in rng.choice(self.num_clients, count, replace=False)))

    def federated(self, data_transform: ClientPoison | None = None) -> FederatedConfig:
        """The simulator configuration of one run."""
        return FederatedConfig(
            dataset=self.dataset,
            num_clients=self.num_clients,
            rounds=self.rounds,
            partition=self.partition,
            seed=self.seed,
            lr=self.lr,
            momentum=self.momentum,
            batch_size=self.batch_size,
            local_epochs=self.local_epochs,
            fraction_fit=1.0,
            data_transform=data_transform,
        )


@dataclass(frozen=True)
class RunSpec:
    """One run: ``attack`` (``None`` for the clean baseline) against ``defence``."""

    attack: str | None
    defence: str

    @property
    def label(self) -> str:
        """``attack/defence`` or ``clean/defence``."""
        return f"{self.attack or 'clean'}/{self.defence}"


@dataclass(frozen=True)
class RunOutcome:
    """What one run produced.

    Attributes:
        attack: Attack name (``None``: the clean baseline).
        defence: Defence name.
        accuracy: Test accuracy per round, round 0 (the initial model) first.
        backdoor_asr: Backdoor attack success rate of the final model (fraction of triggered
            test images of other classes classified as the target); ``None`` without a backdoor.
        rejected_malicious: Malicious updates the defence rejected, per round.
        rejected_honest: Honest updates the defence rejected, per round.
        seconds: Wall-clock time of the run.
    """

    attack: str | None
    defence: str
    accuracy: tuple[float, ...]
    backdoor_asr: float | None
    rejected_malicious: tuple[int, ...]
    rejected_honest: tuple[int, ...]
    seconds: float

    @property
    def final_accuracy(self) -> float:
        """Test accuracy after the last round."""
        return self.accuracy[-1]

    def to_dict(self, clean_accuracy: float | None = None) -> dict[str, object]:
        """JSON-ready view; ``delta_vs_clean`` when ``clean_accuracy`` is given."""
        out: dict[str, object] = {
            "attack": self.attack,
            "defence": self.defence,
            "final_accuracy": self.final_accuracy,
            "delta_vs_clean": (
                None if clean_accuracy is None else self.final_accuracy - clean_accuracy
            ),
            "backdoor_asr": self.backdoor_asr,
            "rejected_malicious_total": sum(self.rejected_malicious),
            "rejected_honest_total": sum(self.rejected_honest),
            "accuracy": list(self.accuracy),
            "rejected_malicious": list(self.rejected_malicious),
            "rejected_honest": list(self.rejected_honest),
            "seconds": self.seconds,
        }
        return out


@dataclass(frozen=True)
class PoisonReport:
    """An experiment, in plan order.

    Attributes:
        setup: The federation.
        clean: The clean baseline: no attack, FedAvg.
        clean_defences: The other defences without attack (empty unless planned).
        runs: Every (attack, defence) run.
        seconds: Wall-clock time of the experiment.
    """

    setup: PoisonSetup
    clean: RunOutcome
    clean_defences: tuple[RunOutcome, ...]
    runs: tuple[RunOutcome, ...]
    seconds: float

    def to_dict(self) -> dict[str, object]:
        """The JSON document ``qflare attack poison --output`` writes."""
        clean = self.clean.final_accuracy
        return {
            "benchmark": "poison",
            "setup": asdict(self.setup),
            "malicious": list(self.setup.malicious),
            "attacks": sorted({r.attack for r in self.runs if r.attack}, key=ATTACKS.index),
            "defences": list(dict.fromkeys(r.defence for r in self.runs)),
            "clean": self.clean.to_dict(),
            "clean_defences": [r.to_dict(clean) for r in self.clean_defences],
            "runs": [r.to_dict(clean) for r in self.runs],
            "seconds": self.seconds,
        }


def plan_runs(
    attacks: Sequence[str], defences: Sequence[str], *, clean_defences: bool = False
) -> list[RunSpec]:
    """The clean FedAvg baseline, then every attack against every defence.

    With ``clean_defences`` the other defences also run without attack, after the baseline.

    ``"all"`` in ``attacks`` or ``defences`` stands for every name in
    :data:`~qflare.fl.poison.ATTACKS` or :data:`~qflare.fl.robust.DEFENCES`.

    Raises:
        ValueError: For an unknown attack or defence, or an empty list.
    """
    attack_names = _expand(attacks, ATTACKS, "attack")
    defence_names = _expand(defences, DEFENCES, "defence")
    clean = [RunSpec(None, "fedavg")]
    if clean_defences:
        clean += [RunSpec(None, d) for d in defence_names if d != "fedavg"]
    return clean + [RunSpec(a, d) for a in attack_names for d in defence_names]


def _expand(names: Sequence[str], known: Sequence[str], kind: str) -> list[str]:
    if not names:
        raise ValueError(f"no {kind} given")
    out: list[str] = []
    for name in names:
        if name == "all":
            out += known
        elif name in known:
            out.append(name)
        else:
            raise ValueError(f"unknown {kind} {name!r}; choose from all, {', '.join(known)}")
    return list(dict.fromkeys(out))


class _RootReference:
    """FLTrust's server: trains the current global model on a small clean root dataset.

    It follows the global model by replaying the FedAvg server step on every aggregate
    (:class:`_Tracked` feeds it), and answers ``reference(round_id)`` with its own delta.
    """

    def __init__(self, setup: PoisonSetup, data: Dataset) -> None:
        name = default_model_name(data.input_shape)
        model = build_model(name, data.input_shape, data.num_classes, seed=setup.seed)
        rng = np.random.default_rng([setup.seed, 0x700])
        root = np.sort(
            rng.choice(len(data.y_train), min(setup.root_size, len(data.y_train)), False)
        )
        loader = client_loader(data, root.astype(np.int64), setup.batch_size)
        self._client = TorchClient(model, nn.CrossEntropyLoss(), loader)
        self._shapes = [tuple(p.shape) for p in model.parameters()]
        self._setup = setup
        self._strategy = build_strategy("fedavg", {})
        self.global_flat = get_flat(model)
        self._strategy.initialize(self.global_flat)

    def __call__(self, round_id: int) -> Float64Vector:
        s = self._setup
        config = fit_config(
            s.seed,
            round_id,
            s.num_clients,  # an id no client has
            epochs=s.local_epochs,
            lr=s.lr,
            momentum=s.momentum,
            batch_size=s.batch_size,
        )
        result = self._client.fit(split_flat(self.global_flat, self._shapes), config)
        return (join_flat(result.weights).astype(np.float64)) - self.global_flat.astype(np.float64)

    def advance(self, aggregate: AggregateResult) -> None:
        """Apply the round's aggregate like the simulator's FedAvg server does."""
        self.global_flat = self._strategy.apply(self.global_flat, aggregate)


class _Tracked:
    """Passes rounds to ``inner`` and lets the root reference follow the global model."""

    def __init__(self, inner: Aggregator, root: _RootReference) -> None:
        self.inner = inner
        self.root = root

    def aggregate(self, round_id: int, updates: Mapping[int, Update]) -> AggregateResult:
        result = self.inner.aggregate(round_id, updates)
        self.root.advance(result)
        return result


def _backdoor_asr(
    setup: PoisonSetup, data: Dataset, weights: npt.NDArray[np.float32], probe: BackdoorAttack
) -> float:
    """Fraction of triggered non-target test images the model ``weights`` labels as target."""
    from qflare.fl import set_flat

    x = probe.triggered_test(data.x_test.numpy(), data.y_test.numpy())
    if len(x) == 0:
        return float("nan")
    model = build_model(
        default_model_name(data.input_shape), data.input_shape, data.num_classes, seed=setup.seed
    )
    set_flat(model, weights)
    labels = torch.full((len(x),), probe.target, dtype=torch.int64)
    _, asr, _ = evaluate_batches(
        model, nn.CrossEntropyLoss(), [(torch.from_numpy(np.ascontiguousarray(x)), labels)]
    )
    return asr


def _default_backdoor(setup: PoisonSetup) -> BackdoorAttack:
    attack = make_attack("backdoor", seed=setup.seed).data
    assert isinstance(attack, BackdoorAttack)
    return attack


def run_one(
    setup: PoisonSetup, spec: RunSpec, data: Dataset | None = None, *, probe_backdoor: bool = False
) -> RunOutcome:
    """Run one (attack, defence) pair, or the clean baseline when ``spec.attack`` is ``None``.

    Args:
        setup: The federation.
        spec: Attack and defence.
        data: The preloaded dataset of ``setup`` (loaded if ``None``).
        probe_backdoor: Also measure the backdoor ASR when the run plants no backdoor (the
            clean model's natural rate, for comparison).
    """
    start = time.perf_counter()
    data = data if data is not None else load_dataset(setup.dataset, setup.seed)
    malicious = frozenset(setup.malicious)
    attack = make_attack(spec.attack, seed=setup.seed) if spec.attack is not None else None
    transform = None
    if attack is not None and attack.data is not None and malicious:
        transform = ClientPoison(attack.data, malicious)
    root = _RootReference(setup, data) if spec.defence in ROOT_DEFENCES else None
    robust = RobustAggregator(make_defence(spec.defence), reference=root)
    aggregator: Aggregator = robust
    if attack is not None and attack.model is not None:
        aggregator = PoisonedAggregator(robust, malicious, attack)
    if root is not None:
        aggregator = _Tracked(aggregator, root)
    result = run_federated(setup.federated(transform), aggregator, data=data)
    probe = (
        attack.data
        if attack is not None and isinstance(attack.data, BackdoorAttack)
        else (_default_backdoor(setup) if probe_backdoor else None)
    )
    asr = None
    if probe is not None:
        with torch_threads(1):
            asr = _backdoor_asr(setup, data, result.final_weights, probe)
    rounds = range(1, setup.rounds + 1)
    rejected = [robust.rejected.get(r, []) for r in rounds]
    return RunOutcome(
        attack=spec.attack,
        defence=spec.defence,
        accuracy=tuple(m.accuracy for m in result.history),
        backdoor_asr=asr,
        rejected_malicious=tuple(sum(c in malicious for c in ids) for ids in rejected),
        rejected_honest=tuple(sum(c not in malicious for c in ids) for ids in rejected),
        seconds=time.perf_counter() - start,
    )


_DATA: dict[tuple[str, int], Dataset] = {}  # per worker process: datasets already loaded


def _worker_run(task: tuple[PoisonSetup, RunSpec, bool]) -> RunOutcome:
    setup, spec, probe = task
    key = (setup.dataset, setup.seed)
    if key not in _DATA:
        _DATA[key] = load_dataset(setup.dataset, setup.seed)
    return run_one(setup, spec, _DATA[key], probe_backdoor=probe)


def run_poison(
    setup: PoisonSetup,
    attacks: Sequence[str],
    defences: Sequence[str],
    *,
    jobs: int = 1,
    clean_defences: bool = False,
    data: Dataset | None = None,
    progress: Callable[[RunOutcome], None] | None = None,
) -> PoisonReport:
    """The clean baseline and every attack against every defence.

    Args:
        setup: The federation.
        attacks: Attack names (``"all"``: every one).
        defences: Defence names (``"all"``: every one in ``DEFENCES``).
        jobs: Runs in parallel worker processes (1: all in this process); the results do not
            depend on it.
        clean_defences: Also run every defence other than FedAvg without attack.
        data: The preloaded dataset for in-process runs.
        progress: Called with each finished run, in completion order.

    Raises:
        ValueError: For an unknown attack or defence or ``jobs < 1`` (before any run starts).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    specs = plan_runs(attacks, defences, clean_defences=clean_defences)
    for spec in specs:
        make_defence(spec.defence)
    probe = any(s.attack == "backdoor" for s in specs)
    tasks = [(setup, spec, probe and spec.attack is None) for spec in specs]
    start = time.perf_counter()
    outcomes: list[RunOutcome | None] = [None] * len(specs)
    if jobs == 1:
        data = data if data is not None else load_dataset(setup.dataset, setup.seed)
        for i, (s, spec, p) in enumerate(tasks):
            outcomes[i] = run_one(s, spec, data, probe_backdoor=p)
            if progress is not None:
                progress(outcomes[i])  # type: ignore[arg-type]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=ctx) as pool:
            futures = {pool.submit(_worker_run, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[futures[future]] = outcome
                if progress is not None:
                    progress(outcome)
    done = [o for o in outcomes if o is not None]
    return PoisonReport(
        setup,
        done[0],
        tuple(o for o in done[1:] if o.attack is None),
        tuple(o for o in done[1:] if o.attack is not None),
        time.perf_counter() - start,
    )


def plot_poison(path: str | Path, report: PoisonReport) -> Path:
    """Test accuracy per round: one panel per attack, one curve per defence, clean dashed.

    Args:
        path: Output PNG; parent directories are created.
        report: The experiment.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    attacks = list(dict.fromkeys(r.attack for r in report.runs if r.attack))
    cols = min(3, max(1, len(attacks)))
    rows = max(1, math.ceil(len(attacks) / cols))
    figure = Figure(figsize=(4.2 * cols, 3.3 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes_list = figure.subplots(rows, cols, squeeze=False).ravel()
    defences = list(dict.fromkeys(r.defence for r in report.runs))
    colours = {d: f"C{i % 10}" for i, d in enumerate(defences)}
    clean = report.clean
    for axes, attack in zip(axes_list, attacks, strict=False):
        rounds = range(len(clean.accuracy))
        axes.plot(rounds, [100 * a for a in clean.accuracy], "k--", label="clean (fedavg)")
        for run in _runs_of(report.runs, attack):
            axes.plot(
                range(len(run.accuracy)),
                [100 * a for a in run.accuracy],
                "-o",
                color=colours[run.defence],
                markersize=3,
                label=run.defence,
            )
        axes.set_title(attack)
        axes.set_xlabel("round")
        axes.set_ylabel("test accuracy (%)")
        axes.set_ylim(0, 100)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for axes in axes_list[len(attacks) :]:
        axes.set_visible(False)
    if attacks:
        axes_list[0].legend(fontsize=7, loc="lower right")
    s = report.setup
    figure.suptitle(
        f"{s.dataset}, {s.num_clients} clients ({len(s.malicious)} malicious), {s.partition}"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    return out


def _runs_of(runs: Iterable[RunOutcome], attack: str) -> list[RunOutcome]:
    return [r for r in runs if r.attack == attack]
