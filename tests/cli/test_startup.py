"""``qflare --help`` and ``--version`` load no heavy library (the start-up budget, not a timer).

The figure itself is measured by ``qflare bench startup`` (docs/benchmarks.md); timing it here
would be flaky on shared machines, so this checks its cause: which modules a fresh interpreter
imports to answer. Every command module is imported to build the app, so a heavy import at the
top of any of them fails this test.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

from qflare import __version__

HEAVY = [
    "torch",
    "sklearn",
    "matplotlib",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "httpx",
    "numpy",
    "cryptography",
    "msgspec",
]
PYDANTIC = ["pydantic", "pydantic_core", "pydantic_settings"]  # Typer parses values with it

_PROBE = """
import json, sys
from qflare.cli.app import app
out = []
for args in json.loads(sys.argv[1]):
    try:
        app(args, prog_name="qflare")
    except SystemExit as exc:
        out.append(exc.code)
print(json.dumps({"codes": out, "modules": sorted(sys.modules)}))
"""


def _probe(argvs: list[list[str]]) -> tuple[list[object], set[str]]:
    """Run the CLI on each argv in one fresh interpreter: exit codes and the modules loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argvs)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(proc.stdout.splitlines()[-1])
    top = {name.split(".")[0] for name in report["modules"]}
    return report["codes"], top


def test_help_and_version_import_nothing_heavy():
    codes, loaded = _probe([["--help"], ["--version"]])
    assert codes == [0, 0]
    assert loaded.isdisjoint(HEAVY + PYDANTIC), sorted(loaded & set(HEAVY + PYDANTIC))


def test_version_matches_the_package_metadata():
    assert __version__ == importlib.metadata.version("qflare")


SERVER_ONLY = ["fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg"]
_NODE_PROBE = """
import json, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # an install without the `server` extra: importing it fails
import qflare.node, qflare.node.launch, qflare.node.runner
import qflare.participant.chronos, qflare.participant.secagg
from qflare.cli.app import app
codes = []
for args in (["node", "--help"], ["node", "run", "--help"], ["node", "enroll", "--help"]):
    try:
        app(args, prog_name="qflare")
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps(codes))
"""


def test_node_commands_need_nothing_from_the_server_extra():
    proc = subprocess.run(
        [sys.executable, "-c", _NODE_PROBE, json.dumps(SERVER_ONLY)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [0, 0, 0]
