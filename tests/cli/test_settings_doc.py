"""Every server setting is documented, and the listing is generated from the model itself."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from qflare.cli.app import app
from qflare.cli.settings_doc import (
    README_BEGIN,
    README_END,
    attribute_docs,
    describe_settings,
    render_markdown,
    replace_block,
)
from qflare.server.settings import ServerSettings

runner = CliRunner()
README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_server_setting_has_a_description():
    undocumented = [d.name for d in describe_settings(ServerSettings) if not d.description]
    assert undocumented == [], "document these in ServerSettings' Attributes: section"


def test_the_docstring_documents_no_setting_that_does_not_exist():
    stale = set(attribute_docs(ServerSettings.__doc__)) - set(ServerSettings.model_fields)
    assert stale == set()


def test_types_bounds_defaults_and_variables_come_from_the_model():
    docs = {d.name: d for d in describe_settings(ServerSettings)}
    assert docs["port"].type == "int ≥ 0, ≤ 65535"
    assert docs["port"].default == "8443"
    assert docs["port"].env == "QFLARE_PORT"
    assert docs["dropout_estimate"].type == "float ≥ 0, < 1"
    assert docs["protocol"].type == "secagg+ | secagg | chronos | chronos-dm | enclave"
    assert docs["tls_cert"].default == "unset"
    assert docs["witness_urls"].default == "[]"
    assert docs["insecure"].default == "false"
    assert "continuation" not in docs["protocol"].description  # sanity of the join below
    assert docs["protocol"].description.endswith("(epochs: offline setup once, then rounds).")


def test_attribute_docs_joins_continuation_lines_and_stops_at_the_next_section():
    doc = """Summary.

    Attributes:
        a: First line
            and its continuation.
        b (int): Typed entry.

    Raises:
        c: not an attribute.
    """
    assert attribute_docs(doc) == {"a": "First line and its continuation.", "b": "Typed entry."}


def test_server_settings_command_lists_every_setting():
    result = runner.invoke(app, ["server", "settings", "--markdown"])
    assert result.exit_code == 0, result.output
    for name, _ in ServerSettings.model_fields.items():
        assert f"`{name}` (`QFLARE_{name.upper()}`)" in result.stdout
    table = runner.invoke(app, ["server", "settings"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "QFLARE_MIN_CLIENTS" in table.stdout


def test_server_help_points_to_the_settings_and_the_openapi_page():
    text = " ".join(runner.invoke(app, ["server", "--help"]).stdout.replace("│", " ").split())
    assert "qflare server settings" in text
    assert "/docs" in text
    assert "--log-level" in text


def test_readme_lists_every_setting_as_generated():
    text = README.read_text(encoding="utf-8")
    expected = replace_block(text, render_markdown(describe_settings(ServerSettings)))
    assert text == expected, (
        f"README's settings table between {README_BEGIN!r} and {README_END!r} is stale: "
        "run `make settings-doc`"
    )
