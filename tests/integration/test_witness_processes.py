"""Real processes: two `qflare witness serve` beside `qflare server`; `qflare ledger verify`."""

from __future__ import annotations

from pathlib import Path

from qflare.cli.federation import LocalFederation


def test_witness_processes_cosign_and_an_outside_audit_passes(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path, {"model": "vector:10"}, witnesses=2)
    fed.prepare()
    with fed:
        fed.start_witnesses()
        fed.start_server()
        fed.enroll(0)  # the server logs the certificate the authority issued
        head = fed.cosigned_head()
        assert head["tree_size"] >= 1
        assert len(head["cosignatures"]) == 2
        state = tmp_path / "auditor.state"
        verify = ["ledger", "verify", "--server", fed.url, "--ca", str(fed.ca)]
        out = fed._run(*verify, *fed.witness_args("--quorum"), "--state", str(state))
        assert "OK" in out and "2 of 2 witnesses" in out
        assert state.exists()
