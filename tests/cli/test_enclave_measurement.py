"""``qflare tee enclave-measurement`` prints what the server's aggregation enclave reports."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.protocol.identity import encode_authority_key
from qflare.server.authority_client import load_authority_key
from qflare.tee.aggregator_ta import AggregatorConfig, aggregator_measurement
from tests.authority.helpers import make_authority


def test_the_printed_measurement_covers_the_authority_and_min_accepted(tmp_path: Path) -> None:
    authority = make_authority(tmp_path / "authority")
    config = tmp_path / "server.json"
    settings = {"authority_key": str(authority.pub), "enclave_min_accepted": 3}
    config.write_text(json.dumps(settings))
    result = CliRunner().invoke(app, ["tee", "enclave-measurement", "--config", str(config)])
    assert result.exit_code == 0, result.output
    key = encode_authority_key(load_authority_key(authority.pub))
    expected = aggregator_measurement(AggregatorConfig(authority=key, min_accepted=3))
    assert expected.hex() in result.output
    other = aggregator_measurement(AggregatorConfig(authority=key, min_accepted=2))
    assert other.hex() not in result.output
    authority.close()
