"""``qflare bench abuse``: the report row judges the figure.

(The attacker and the honest nodes of the benchmark run in ``tests/faults``, in process.)
"""

from __future__ import annotations

import json
from pathlib import Path

from qflare.bench.report import abuse_rows


def test_the_row_says_not_met_below_the_target(tmp_path: Path) -> None:
    point = {
        "config": {"rate": 2000.0, "nodes": 5, "rounds": 20, "target": 0.95},
        "flood": {"sent_per_s": 2000.0, "answered_per_s": 900.0},
        "completed_share": 0.9,
        "target_met": False,
    }
    (tmp_path / "abuse.json").write_text(json.dumps(point))
    (row,) = abuse_rows(tmp_path)
    assert row.endswith("| NOT met |") and "90 % completed by all" in row
