"""``make demo``: a real federation on localhost — TLS server, enrolled node processes, MNIST.

Everything runs through the real command line and real HTTPS on loopback; the demo only watches:
after every round it evaluates the new global model on the held-out MNIST test split.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

from qflare.cli.federation import LocalFederation
from qflare.fl import build_model, default_model_name, evaluate_batches, load_dataset, set_flat
from qflare.store.db import make_engine, session_factory
from qflare.store.models import ModelVersion

ENCLAVE_MIN = 2  # valid uploads an enclave round needs (part of the pinned measurement)


@dataclass(frozen=True)
class DemoPlan:
    """Size of the demo federation."""

    nodes: int = 5
    rounds: int = 5
    workdir: Path = Path("out/demo")
    scheme: str = "mldsa65"
    witnesses: int = 2
    protocol: str = "secagg+"

    @property
    def label(self) -> str:
        """How the rounds aggregate, for titles."""
        return "enclave aggregation" if self.protocol == "enclave" else "SecAgg+"


class Evaluator:
    """Test accuracy of stored model versions on the MNIST test split."""

    def __init__(self, database: Path) -> None:
        self.data = load_dataset("mnist", 0)
        self.model = build_model(
            default_model_name(self.data.input_shape),
            self.data.input_shape,
            self.data.num_classes,
            seed=0,
        )
        self._factory = session_factory(make_engine(f"sqlite:///{database}"))

    def evaluate(self, version: int) -> tuple[float, float]:
        """(accuracy, loss) of model ``version``."""
        with self._factory() as db:
            row = db.get(ModelVersion, version)
            assert row is not None
            set_flat(self.model, np.frombuffer(row.weights, dtype=np.float32).copy())
        x, y = self.data.x_test, self.data.y_test
        loss, accuracy, _ = evaluate_batches(self.model, nn.CrossEntropyLoss(), [(x, y)])
        return accuracy, loss


def _start(console: Console, fed: LocalFederation, plan: DemoPlan) -> None:
    fed.prepare()
    console.print(f"TLS CA and server certificate: {fed.ca.parent}")
    console.print(
        f"enrollment authority: {fed.authority_dir} — [bold]authority.key is the key an operator "
        "keeps offline[/] (the trust root: it signs every token and device certificate); the "
        "server gets only authority.pub"
    )
    if fed.witnesses:
        fed.start_witnesses()
        console.print(
            f"{fed.witnesses} ledger witnesses up (ports {', '.join(map(str, fed.witness_ports))}):"
            " each cosigns a tree head only if it extends the last one it cosigned"
        )
    fed.start_server()
    console.print(f"server up at {fed.url} (SQLite: {fed.workdir / 'server' / 'qflare.sqlite'})")
    with console.status(
        "the authority issues single-use tokens; nodes enroll through the server (post-quantum "
        "keys made on each node, certified by the authority)"
    ):
        fed.enroll_all(range(plan.nodes), plan.scheme)
    console.print(f"{plan.nodes} nodes enrolled; each holds a Dirichlet(0.5) shard of MNIST")
    for i in range(plan.nodes):
        args = (
            "--dataset",
            "mnist",
            "--partition",
            "dirichlet:0.5",
            "--shard",
            str(i),
            "--shards",
            str(plan.nodes),
        )
        rounds = ("--max-rounds", str(plan.rounds), "--poll-wait", "2")
        fed.start_node(
            i, *args, *rounds, *fed.witness_args(), *_enclave_args(console, fed, plan, i)
        )


def _enclave_args(console: Console, fed: LocalFederation, plan: DemoPlan, index: int) -> list[str]:
    """What a node needs to take part in enclave rounds: the pinned measurement, the root."""
    if plan.protocol != "enclave":
        return []
    from qflare.protocol.identity import encode_authority_key
    from qflare.server.authority_client import load_authority_key
    from qflare.tee.aggregator_ta import AggregatorConfig, aggregator_measurement

    key = load_authority_key(fed.authority_dir / "authority.pub")
    config = AggregatorConfig(authority=encode_authority_key(key), min_accepted=ENCLAVE_MIN)
    measurement = aggregator_measurement(config).hex()
    root = fed.workdir / "server" / "enclave" / "maker" / "maker.cert"
    if index == 0:
        console.print(
            "the server aggregates in a [bold]SIMULATED[/] enclave (no hardware isolation; allowed "
            f"explicitly with enclave_allow_simulated); its simulated maker root: {root}"
        )
        console.print(f"nodes pin the aggregation enclave's measurement {measurement}")
    return [
        "--enclave-measurement",
        measurement,
        "--enclave-root",
        str(root),
        "--allow-simulated-attestation",
    ]


def _watch(
    console: Console, fed: LocalFederation, plan: DemoPlan, evaluator: Evaluator
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "round": 0,
            "model_version": 0,
            **dict(zip(("accuracy", "loss"), evaluator.evaluate(0), strict=True)),
        }
    ]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"{plan.label} rounds", total=plan.rounds)
        while len(rows) <= plan.rounds:
            done = fed.wait_rounds(len(rows), 600)
            latest = done[len(rows) - 1]
            version = int(latest["model_version"]) + 1
            accuracy, loss = evaluator.evaluate(version)
            rows.append(
                {
                    "round": latest["id"],
                    "model_version": version,
                    "accuracy": accuracy,
                    "loss": loss,
                    "closed_at": latest["closed_at"],
                }
            )
            bar.update(
                task, advance=1, description=f"round {latest['id']}: test accuracy {accuracy:.3f}"
            )
    return rows


def _report(
    console: Console, fed: LocalFederation, plan: DemoPlan, rows: list[dict[str, Any]]
) -> None:
    table = Table(title=f"global model after each {plan.label} round (MNIST test split)")
    for col in ("round", "model version", "test accuracy", "test loss"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["round"]), str(r["model_version"]), f"{r['accuracy']:.4f}", f"{r['loss']:.4f}"
        )
    console.print(table)
    head = _ledger_report(console, fed) if fed.witnesses else _signed_head(console, fed)
    metrics = fed.workdir / "metrics.json"
    metrics.write_text(
        json.dumps({"rounds": rows, "ledger_head": head, "server_rounds": fed.rounds()}, indent=2)
    )
    plot = _plot(fed.workdir / "accuracy.png", rows, plan.label)
    console.print(f"metrics: {metrics}\nplot:    {plot}")
    console.print(f"logs:    {fed.workdir}/server.log, {fed.workdir}/node*.log, witness*.log")


def _signed_head(console: Console, fed: LocalFederation) -> dict[str, Any]:
    head: dict[str, Any] = httpx.get(
        f"{fed.url}/v1/ledger/head", verify=fed._tls(), timeout=10
    ).json()
    console.print(
        f"audit ledger: {head['tree_size']} entries, signed tree head root "
        f"{head['root_hash'][:16]}… (ML-DSA-65); rows in table audit_entries"
    )
    return head


def _ledger_report(console: Console, fed: LocalFederation) -> dict[str, Any]:
    """Show the cosigned head, then audit the server from the outside as anyone could."""
    head = fed.cosigned_head()
    witnesses = ", ".join(c["witness"][:12] + "…" for c in head["cosignatures"])
    console.print(
        f"audit ledger: {head['tree_size']} entries, root {head['root_hash'][:16]}…, signed by the "
        f"server (ML-DSA-65) and cosigned by {len(head['cosignatures'])} of {fed.witnesses} "
        f"witnesses ({witnesses}); rows in table audit_entries"
    )
    args = ["ledger", "verify", "--server", fed.url, "--ca", str(fed.ca)]
    args += fed.witness_args("--quorum")
    console.print(f"$ qflare {' '.join(args)}")
    console.print(fed._run(*args).rstrip())
    return head


def _plot(path: Path, rows: list[dict[str, Any]], label: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [r["round"] for r in rows],
        [r["accuracy"] for r in rows],
        marker="o",
        label=f"{label} over HTTPS",
    )
    ax.set(
        xlabel="round",
        ylabel="test accuracy",
        title=f"QFLARE demo: MNIST over HTTPS with {label}",
        ylim=(0, 1),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_network_demo(console: Console, plan: DemoPlan) -> list[dict[str, Any]]:
    """Start the federation, train ``plan.rounds`` rounds, report, shut everything down."""
    console.rule("[bold]QFLARE demo: a secure federation on localhost")
    start = time.perf_counter()
    settings = {
        "dataset": "mnist",
        "min_clients": plan.nodes,
        "max_clients": plan.nodes,
        "max_rounds": plan.rounds,
        "step_timeout_s": 120,
        "round_interval_s": 0.2,
        "signature_scheme": plan.scheme,
        "max_total_weight": 10_000,
    }
    if plan.protocol == "enclave":
        settings |= {
            "protocol": "enclave",
            "enclave_allow_simulated": True,
            "enclave_min_accepted": ENCLAVE_MIN,
        }
    plan.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(plan.workdir) / time.strftime("run-%Y%m%d-%H%M%S")
    with LocalFederation(workdir, settings, witnesses=plan.witnesses) as fed:
        _start(console, fed, plan)
        evaluator = Evaluator(workdir / "server" / "qflare.sqlite")
        rows = _watch(console, fed, plan, evaluator)
        _report(console, fed, plan, rows)
    console.print(f"all processes stopped; {time.perf_counter() - start:.0f} s in total")
    return rows
