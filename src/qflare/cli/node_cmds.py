"""``qflare node enroll`` and ``qflare node run``: parse flags, call :mod:`qflare.node.launch`."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qflare.cli.faults import fail
from qflare.cli.options import (
    DatasetName,
    LogLevel,
    SchemeName,
    check_partition,
    check_trainer_spec,
)
from qflare.logs import configure_logging

if TYPE_CHECKING:  # loaded inside the commands: `qflare --help` stays fast
    from qflare.node import TrainingConfig

node_app = typer.Typer(
    help="Edge node: enroll once with a token, then take part in secure-aggregation rounds.",
    no_args_is_help=True,
)

DEFAULT_STATE_DIR = Path("qflare-node")  # qflare.node.launch.DEFAULT_STATE_DIR (tests check)
StateDir = Annotated[
    Path, typer.Option(help="Node state directory (keys 0600, enrollment, used round ids).")
]
Ca = Annotated[
    Path | None,
    typer.Option(exists=True, dir_okay=False, help="CA certificate (PEM) of the server."),
]
Insecure = Annotated[
    bool, typer.Option("--insecure", help="Allow plain http:// (tests on loopback only: no TLS).")
]
LogLevelOpt = Annotated[
    LogLevel, typer.Option(case_sensitive=False, help="Log level (JSON lines on stderr).")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    return fail(message, code)


@node_app.command("enroll")
def enroll_cmd(
    server: Annotated[str, typer.Option(help="Server URL, e.g. https://fl.example.org:8443.")],
    token: Annotated[
        str,
        typer.Option(
            envvar="QFLARE_ENROLL_TOKEN",
            help="Single-use token from `qflare authority token create` (qft1.…).",
        ),
    ],
    ca: Ca = None,
    insecure: Insecure = False,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    scheme: Annotated[
        SchemeName, typer.Option(help="Identity signatures of the federation.")
    ] = "mldsa65",
    log_level: LogLevelOpt = "warning",
) -> None:
    """Create this node's keys and have the enrollment authority certify them (via the server)."""
    from qflare.crypto import SignatureScheme
    from qflare.node import NodeState, ServerError, StateError, TransportError
    from qflare.node.launch import EnrollOptions, enroll_node

    configure_logging(log_level)
    try:
        options = EnrollOptions(server, token, state_dir, ca, insecure, SignatureScheme(scheme))
        record = enroll_node(options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except ServerError as exc:
        raise _fail(
            f"the server refused the enrollment ({exc.code or exc.status}): {exc.detail}"
        ) from exc
    except (TransportError, StateError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(
        f"enrolled as device {record.device_id} at {record.server_url}, certified by authority "
        f"{NodeState.open(state_dir).authority().fingerprint.hex()[:16]} (state: {state_dir})"
    )


def _training(shard: int | None, shards: int | None, **fields: Any) -> TrainingConfig:
    from qflare.node import TrainingConfig

    if shard is None or shards is None:
        raise typer.BadParameter("real training needs --shard I and --shards N (or --trainer)")
    try:
        return TrainingConfig(shard=shard, shards=shards, **fields)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        typer.echo(f"received {signal.Signals(signum).name}: stopping after this poll", err=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


@node_app.command("run")
def run_cmd(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    ca: Ca = None,
    insecure: Insecure = False,
    dataset: Annotated[DatasetName, typer.Option(help="Dataset of the federation.")] = "mnist",
    partition: Annotated[
        str, typer.Option(parser=check_partition, help="iid, dirichlet:ALPHA or shards:K.")
    ] = "dirichlet:0.5",
    shard: Annotated[
        int | None,
        typer.Option(min=0, help="This node's partition index I, 0..N-1 (required, or --trainer)."),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(min=1, help="Number of partitions N (required with --shard, or --trainer)."),
    ] = None,
    data_seed: Annotated[
        int,
        typer.Option(
            min=0,
            max=2**32 - 1,
            help="Seed of the split (the same on every node of a federation).",
        ),
    ] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    lr: Annotated[float, typer.Option(min=0.0, help="Local SGD learning rate.")] = 0.02,
    batch_size: Annotated[int, typer.Option(min=1, help="Local batch size.")] = 32,
    trainer: Annotated[
        str | None,
        typer.Option(
            parser=check_trainer_spec,
            help="Test trainer constant:SEED\\[:WEIGHT] instead of a dataset.",
        ),
    ] = None,
    max_rounds: Annotated[
        int | None,
        typer.Option(
            min=1, help="Stop after this many completed rounds (aborted ones don't count)."
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(min=0, help="TEST ONLY: seed masks and rounding (predictable to anyone)."),
    ] = None,
    poll_wait: Annotated[float, typer.Option(min=0.0, help="Long-poll seconds.")] = 10.0,
    enclave: Annotated[
        bool,
        typer.Option(
            "--enclave", help="Keep CHRONOS secrets in a simulated enclave (under --state-dir)."
        ),
    ] = False,
    witness_key: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Key file of a ledger witness to trust (repeat): check the server's audit "
            "ledger at every round start and stop if its history forked.",
        ),
    ] = None,
    witness_quorum: Annotated[
        int | None, typer.Option(min=1, help="Cosignatures a ledger head needs (default: all).")
    ] = None,
    corrupt_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.49,
            help="Policy: fraction of a cohort assumed to collude with the server; rounds whose "
            "k and t are weaker than the parameter finder's for it are declined.",
        ),
    ] = 0.05,
    security_bits: Annotated[
        int, typer.Option(min=1, max=128, help="Policy: accepted privacy failure 2^-bits.")
    ] = 40,
    min_cohort: Annotated[
        int, typer.Option(min=2, help="Policy: fewest participants this node takes part with.")
    ] = 3,
    tee_maker: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="With --enclave: a SIMULATED TEE maker (qflare tee maker-init) that certifies "
            "this device's enclave platform so that it can attest.",
        ),
    ] = None,
    enclave_measurement: Annotated[
        str | None,
        typer.Option(
            help="Take part in enclave-aggregation rounds: the aggregation enclave's measurement "
            "(64 hex digits) this node pins; a round whose evidence does not match is declined.",
        ),
    ] = None,
    enclave_root: Annotated[
        list[Path] | None,
        typer.Option(
            dir_okay=False,
            help="Root certificate the enclave's platform chain must end at (repeatable).",
        ),
    ] = None,
    allow_simulated_attestation: Annotated[
        bool,
        typer.Option(help="Accept evidence from the SIMULATED TEE backend (no real isolation)."),
    ] = False,
    log_level: LogLevelOpt = "info",
) -> None:
    """Take part in rounds until stopped (SIGINT/SIGTERM) or --max-rounds are done.

    Real training needs --shard I and --shards N (this node's part of the federation's split);
    --trainer replaces them in tests.
    """
    from qflare.node import NodeFatalError, StateError
    from qflare.node.launch import RunOptions, run_node
    from qflare.protocol.policy import ClientPolicy

    training = (  # checked before anything else happens
        None
        if trainer is not None
        else _training(
            shard,
            shards,
            dataset=dataset,
            partition=partition,
            seed=data_seed,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
        )
    )
    options = RunOptions(
        client_policy=ClientPolicy(
            corrupt_fraction=corrupt_fraction, security_bits=security_bits, min_cohort=min_cohort
        ),
        tee_maker=tee_maker,
        enclave_measurement=enclave_measurement,
        enclave_roots=tuple(enclave_root or ()),
        allow_simulated_attestation=allow_simulated_attestation,
        state_dir=state_dir,
        ca=ca,
        insecure=insecure,
        training=training,
        trainer_spec=trainer,
        max_rounds=max_rounds,
        seed=seed,
        poll_wait=poll_wait,
        enclave=enclave,
        witness_keys=tuple(witness_key or ()),
        witness_quorum=witness_quorum,
    )
    configure_logging(log_level)
    stop = threading.Event()
    _install_stop_handlers(stop)
    try:
        report = run_node(options, stop)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    except (NodeFatalError, StateError) as exc:
        raise _fail(str(exc), code=2) from exc
    typer.echo(
        f"rounds completed {report.completed}, dropped {report.dropped},"
        f" results sent {report.results_sent}"
    )
