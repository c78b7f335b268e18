"""``make demo`` / ``qflare demo``: one in-memory SecAgg+ round, explained."""

from __future__ import annotations

import time

import numpy as np
from rich.console import Console
from rich.table import Table

from qflare.cli.settings import Settings
from qflare.crypto import DeterministicRng
from qflare.protocol.graph import find_params
from qflare.protocol.messages import RoundConfig
from qflare.protocol.quantize import QuantConfig, dequantize, quantize
from qflare.protocol.secagg import ROUNDS, State
from qflare.sim.cohort import Cohort


def run_demo(
    settings: Settings, console: Console, *, clients: int, dim: int, dropout: float
) -> None:
    """Aggregate ``clients`` random float updates with SecAgg+, some clients dropping mid-round."""
    params = find_params(clients, dropout_fraction=max(dropout, 0.01))
    quant = QuantConfig(clip=1.0, modulus_bits=32, max_total_weight=clients * 100)
    rng = np.random.default_rng(0)
    updates = {u: rng.normal(0, 0.1, dim) for u in range(clients)}
    weights = {u: int(rng.integers(10, 100)) for u in range(clients)}
    drbg = DeterministicRng(1)
    ring = {u: quantize(updates[u], weights[u], quant, drbg) for u in range(clients)}
    stages = [State.R1_SHARE_KEYS, State.R2_MASKED_INPUT, State.R3_CONSISTENCY, State.R4_UNMASK]
    n_drop = round(dropout * clients)
    dropouts = {u: stages[i % len(stages)] for i, u in enumerate(range(clients - n_drop, clients))}
    cfg = RoundConfig(
        session="demo",
        round_id=1,
        participants=tuple(range(clients)),
        k=params.k,
        t=params.t,
        dim=dim + 1,
        signature_scheme=settings.signature_scheme,
    )
    console.rule("[bold]QFLARE demo: one SecAgg+ round, in memory")
    console.print(
        f"{clients} clients, d={dim:,} floats, k={params.k} shares/client, t={params.t}, identities: {settings.signature_scheme}"
    )
    console.print(
        f"dropouts: {', '.join(f'client {u} at {s.value}' for u, s in dropouts.items()) or 'none'}"
    )
    console.print(
        "each client first checks k and t against its own policy and every peer's certificate "
        "against the enrollment authority; the graph seed is drawn by all (commit, then reveal)"
    )
    t0 = time.perf_counter()
    res = Cohort(cfg, seed=2, dropouts=dropouts).run(lambda u: ring[u].copy())
    wall = time.perf_counter() - t0
    _table(console, res.server_seconds, res.client_seconds, res.upload_bytes)
    if res.total is None:
        console.print(f"[red]round aborted: {res.server_errors}")
        return
    total, weight = dequantize(res.total, quant)
    plain = sum(weights[u] * updates[u] for u in res.survivors)
    err = float(np.max(np.abs(total - plain)))
    exact_ring = np.sum([ring[u] for u in res.survivors], axis=0, dtype=np.uint64).astype(np.uint32)
    console.print(
        f"survivors (inputs in the sum): {len(res.survivors)}/{clients}; excluded: {res.excluded}"
    )
    console.print(
        f"exact modular sum matches plain sum of survivors' ring vectors: [bold]{np.array_equal(exact_ring, res.total)}[/bold]"
    )
    console.print(
        f"total weight {weight} (expected {sum(weights[u] for u in res.survivors)}); max |dequantised - float sum| = {err:.2e} (quantisation step {1 / quant.scale:.1e} x weight)"
    )
    console.print(
        f"whole round in-process: {wall:.2f} s (server compute {res.server_total_seconds():.3f} s)"
    )


def _table(
    console: Console,
    server: dict[State, float],
    client: dict[State, dict[int, float]],
    up: dict[State, dict[int, int]],
) -> None:
    table = Table(title="per round")
    for col in ("round", "server s", "client mean s", "upload B/client"):
        table.add_column(col, justify="right")
    for state in ROUNDS:
        if state not in server and state not in client:
            continue  # the seed step exists only for sparse graphs
        times, sizes = list(client.get(state, {}).values()), list(up.get(state, {}).values())
        table.add_row(
            state.value,
            f"{server.get(state, 0.0):.4f}",
            f"{np.mean(times):.4f}" if times else "-",
            f"{np.mean(sizes):,.0f}" if sizes else "-",
        )
    console.print(table)
