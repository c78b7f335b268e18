"""Choices and value checks shared by the commands, cheap to import.

Every command module is imported when ``qflare`` starts (even for ``--help``), so what they need
at definition time lives here and imports nothing heavy: choices are ``Literal`` types (Typer
turns them into choice options; ``tests/cli/test_options.py`` checks them against the library's
enums), and the string checks below run while options are parsed, before any work starts
(they import the library's own parser only then).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "PROTOCOLS",
    "ChronosMode",
    "DemoProtocol",
    "DatasetName",
    "LogLevel",
    "PLAIN",
    "POISON_ATTACKS",
    "SchemeName",
    "SimProtocol",
    "StrategyName",
    "check_attack",
    "check_defence",
    "check_partition",
    "check_trainer_spec",
]

SchemeName = Literal["mldsa65", "ed25519", "hybrid"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
DatasetName = Literal["mnist", "digits"]
SimProtocol = Literal["secagg+", "secagg", "plain"]
"""``qflare simulate``'s choices: the SecAgg protocols (see ``ProtocolName``) or no masking."""
PLAIN = "plain"
"""The simulation choice without secure aggregation (not a protocol: a plain weighted sum)."""
StrategyName = Literal["fedavg", "fedadam", "fedyogi", "fedadagrad"]
ChronosMode = Literal["chronos", "chronos-dm"]
DemoProtocol = Literal["secagg+", "enclave"]
"""``qflare demo --protocol``: the networked demo's aggregation (see ``ProtocolName``)."""
POISON_ATTACKS: tuple[str, ...] = (
    "sign-flip",
    "scaling",
    "gaussian",
    "alie",
    "ipm",
    "label-flip",
    "backdoor",
)
"""A cheap copy of :data:`qflare.fl.poison.ATTACKS` (a repeatable option cannot be a Literal)."""
PROTOCOLS: tuple[str, ...] = get_args(SimProtocol)
"""Aggregation protocols ``qflare simulate`` accepts."""


def check_partition(value: str) -> str:
    """A partition spec the federation understands (``iid``, ``dirichlet:ALPHA``, ``shards:K``).

    Raises:
        ValueError: anything else.
    """
    from qflare.fl.partition import parse_partition

    try:
        parse_partition(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not iid, dirichlet:ALPHA (ALPHA > 0) or shards:K") from exc
    return value


def check_attack(value: str) -> str:
    """``all`` or a poisoning attack of :data:`POISON_ATTACKS`.

    Raises:
        ValueError: anything else.
    """
    if value != "all" and value not in POISON_ATTACKS:
        raise ValueError(f"unknown attack {value!r}; choose from all, {', '.join(POISON_ATTACKS)}")
    return value


def check_defence(value: str) -> str:
    """``all`` or a robust aggregation rule of :data:`qflare.fl.robust.DEFENCES` (read at run time).

    Raises:
        ValueError: anything else.
    """
    from qflare.fl.robust import DEFENCES

    if value != "all" and value not in DEFENCES:
        raise ValueError(f"unknown defence {value!r}; choose from all, {', '.join(DEFENCES)}")
    return value


def check_trainer_spec(value: str) -> str:
    """A test trainer spec ``constant:SEED[:WEIGHT]``.

    Raises:
        ValueError: anything else (message from :func:`qflare.node.trainer.parse_trainer_spec`).
    """
    from qflare.node.trainer import parse_trainer_spec

    parse_trainer_spec(value)
    return value
