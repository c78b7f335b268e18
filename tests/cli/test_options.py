"""The CLI's cheap copies of choices and defaults match the library they stand for."""

from __future__ import annotations

import inspect
from typing import get_args

import pytest

from qflare.cli import node_cmds, server_cmds
from qflare.cli.options import (
    PLAIN,
    ChronosMode,
    DatasetName,
    DemoProtocol,
    LogLevel,
    SchemeName,
    SimProtocol,
    StrategyName,
)
from qflare.crypto import SignatureScheme
from qflare.crypto.x509 import SERVER_VALID_DAYS
from qflare.fl.datasets import DATASET_NAMES
from qflare.fl.strategy import STRATEGY_NAMES, build_strategy
from qflare.logs import LEVELS
from qflare.node.launch import DEFAULT_STATE_DIR
from qflare.protocol.chronos import Mode
from qflare.protocol.names import ProtocolName
from qflare.server.settings import ServerSettings
from qflare.sim.secure import SECURE_PROTOCOLS


def test_choices_match_the_library():
    assert get_args(SchemeName) == tuple(s.value for s in SignatureScheme)
    assert get_args(DatasetName) == DATASET_NAMES
    assert get_args(ChronosMode) == tuple(m.value for m in Mode)
    assert get_args(ChronosMode) == tuple(p.value for p in ProtocolName if p.epochs)
    assert set(get_args(SimProtocol)) == {p.value for p in SECURE_PROTOCOLS} | {PLAIN}
    assert ServerSettings.model_fields["protocol"].annotation is ProtocolName
    assert set(get_args(DemoProtocol)) <= {p.value for p in ProtocolName}
    assert get_args(ServerSettings.model_fields["strategy"].annotation) == STRATEGY_NAMES
    assert get_args(LogLevel) == LEVELS
    assert get_args(ServerSettings.model_fields["log_level"].annotation) == LEVELS


@pytest.mark.parametrize("name", get_args(StrategyName))
def test_every_strategy_choice_exists(name: str):
    build_strategy(name)


def test_defaults_match_the_library():
    assert node_cmds.DEFAULT_STATE_DIR == DEFAULT_STATE_DIR
    days = inspect.signature(server_cmds.certs_init).parameters["days"].default
    assert days == SERVER_VALID_DAYS
