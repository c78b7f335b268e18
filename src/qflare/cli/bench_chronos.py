"""``qflare bench chronos | chronos-storage | chronos-net``: the CHRONOS benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from qflare.cli.bench_output import emit_json
from qflare.cli.options import ChronosMode, SchemeName

Stage = Callable[[str], None]


def _parse_rtts(values: list[str]) -> tuple[float, ...]:
    try:
        rtts = tuple(float(v) for item in values for v in item.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter("--rtt-ms takes numbers, repeated or comma-separated") from None
    if not rtts or any(r < 0 for r in rtts):
        raise typer.BadParameter("--rtt-ms needs at least one non-negative value")
    return rtts


def _run_staged(
    label: str, run: Callable[[Stage], dict[str, Any]], as_json: bool, output: Path | None
) -> None:
    """Run a benchmark under a spinner showing its stage; print (and write) its JSON.

    Parameters that are each in range but do not fit together (``t > k``, no ``(k, t)`` for
    ``n``) stop the run at its first step and are reported like any bad option (exit 2).
    """
    from qflare.protocol.errors import ProtocolError

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), TimeElapsedColumn(), console=console, disable=as_json
    ) as bar:
        task = bar.add_task(label)
        try:
            result = run(lambda stage: bar.update(task, description=stage))
        except RuntimeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        except (ProtocolError, ValueError) as exc:
            raise typer.BadParameter(str(exc).split("] ", 1)[-1]) from None
    emit_json(result, output)


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
OutputOpt = Annotated[Path | None, typer.Option(help="Also write the JSON here.")]
ClientsOpt = Annotated[int, typer.Option(min=2, help="Number of clients n.")]
DimOpt = Annotated[int, typer.Option(min=1, help="Update length d.")]
KOpt = Annotated[
    int | None, typer.Option(min=2, help="Closed-neighbourhood size; default: finder.")
]
TOpt = Annotated[int | None, typer.Option(min=1, help="Shamir threshold; default: finder.")]
UpOpt = Annotated[float, typer.Option(min=0.01, help="Client uplink, Mbit/s.")]
DownOpt = Annotated[float, typer.Option(min=0.01, help="Client downlink, Mbit/s.")]
SchemeOpt = Annotated[SchemeName, typer.Option(help="Identity signatures.")]
RepeatOpt = Annotated[int, typer.Option(min=1, help="Repeats (medians are reported).")]


def register(bench_app: typer.Typer) -> None:
    """Add the CHRONOS benchmark commands to ``bench_app``."""

    @bench_app.command("chronos")
    def bench_chronos(
        clients: ClientsOpt = 20,
        dim: DimOpt = 100_000,
        k: KOpt = None,
        t: TOpt = None,
        dropout: Annotated[
            float, typer.Option(min=0.0, max=0.99, help="Fraction of clients that drop.")
        ] = 0.0,
        rtt_ms: Annotated[
            list[str] | None,
            typer.Option(help="Round-trip time(s) in ms: repeat or comma-separate."),
        ] = None,
        uplink_mbps: UpOpt = 20.0,
        downlink_mbps: DownOpt = 100.0,
        scheme: SchemeOpt = "mldsa65",
        repeat: RepeatOpt = 3,
        enclave: Annotated[
            bool, typer.Option(help="Also measure one device on the simulated enclave.")
        ] = True,
        as_json: JsonFlag = False,
        output: OutputOpt = None,
    ) -> None:
        """Active-phase latency of CHRONOS, CHRONOS-DM and SecAgg+ under a network model."""
        from qflare.bench.chronos import ChronosBenchConfig, run_chronos_bench

        cfg = ChronosBenchConfig(
            clients=clients,
            dim=dim,
            k=k,
            t=t,
            dropout=dropout,
            rtt_ms=_parse_rtts(rtt_ms or ["50", "200"]),
            uplink_mbps=uplink_mbps,
            downlink_mbps=downlink_mbps,
            scheme=scheme,
            repeat=repeat,
            enclave=enclave,
        )
        _run_staged("chronos bench", lambda say: run_chronos_bench(cfg, say), as_json, output)

    @bench_app.command("chronos-storage")
    def bench_chronos_storage(
        clients: ClientsOpt = 20,
        dims: Annotated[
            str, typer.Option(help="Model sizes d, comma-separated.")
        ] = "10000,100000,1000000,10000000",
        mode: Annotated[ChronosMode, typer.Option(help="CHRONOS variant.")] = "chronos-dm",
        scheme: SchemeOpt = "mldsa65",
        as_json: JsonFlag = False,
        output: OutputOpt = None,
    ) -> None:
        """Trusted storage and sealed state of one simulated-enclave CHRONOS device across d."""
        from qflare.bench.chronos_storage import run_storage_bench
        from qflare.protocol.chronos import Mode

        try:
            sizes = [int(v) for v in dims.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter("--dims takes integers, comma-separated") from None
        chosen = Mode(mode)
        if not sizes or min(sizes) < 1:
            raise typer.BadParameter("--dims needs positive sizes")
        _run_staged(
            "chronos storage",
            lambda say: run_storage_bench(clients, sizes, chosen, scheme, progress=say),
            as_json,
            output,
        )

    @bench_app.command("chronos-net")
    def bench_chronos_net(
        clients: Annotated[
            int, typer.Option(min=2, help="Number of clients n (one process each).")
        ] = 20,
        dim: DimOpt = 100_000,
        k: KOpt = None,
        t: TOpt = None,
        rtt_ms: Annotated[float, typer.Option(min=0.0, help="Round-trip time, ms.")] = 50.0,
        uplink_mbps: UpOpt = 20.0,
        downlink_mbps: DownOpt = 100.0,
        scheme: SchemeOpt = "mldsa65",
        repeat: RepeatOpt = 3,
        loopback: Annotated[
            bool, typer.Option(help="Loopback with delay only (no root: no bandwidth shaping).")
        ] = False,
        as_json: JsonFlag = False,
        output: OutputOpt = None,
    ) -> None:
        """Confirm one CHRONOS / SecAgg+ point over real sockets in network namespaces (root)."""
        from qflare.bench.chronos_net import NetBenchConfig, run_net_bench

        cfg = NetBenchConfig(
            clients=clients,
            dim=dim,
            k=k,
            t=t,
            rtt_ms=rtt_ms,
            uplink_mbps=uplink_mbps,
            downlink_mbps=downlink_mbps,
            scheme=scheme,
            repeat=repeat,
            netns=not loopback,
        )
        _run_staged("chronos-net bench", lambda say: run_net_bench(cfg, say), as_json, output)
