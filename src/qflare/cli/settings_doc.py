"""Documentation of a settings model, generated from the model itself so it cannot drift.

For every field: its name, type (with the bounds it is validated against), default, environment
variable, and description — the field's ``description`` or, as in QFLARE's settings classes, its
entry in the class docstring's Google-style ``Attributes:`` section. ``qflare server settings``
prints it; the README's table is its ``--markdown`` output (``make settings-doc`` rewrites it).
"""

from __future__ import annotations

import enum
import json
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

__all__ = [
    "README_BEGIN",
    "README_END",
    "SettingDoc",
    "attribute_docs",
    "describe_settings",
    "render_markdown",
    "replace_block",
    "update_readme",
]

README_BEGIN = "<!-- server-settings:begin (generated: make settings-doc) -->"
README_END = "<!-- server-settings:end -->"
_ENTRY = re.compile(r"(?P<name>\w+)(?: \([^)]*\))?: (?P<text>.*)")
_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


@dataclass(frozen=True)
class SettingDoc:
    """One documented setting.

    Attributes:
        name: Field name (also the key in a TOML/JSON ``--config`` file).
        type: Type and bounds, e.g. ``int ≥ 1`` or ``secagg+ | secagg``.
        default: Default as it would be written in TOML (``unset`` for ``None``).
        env: Environment variable that sets it.
        description: What it does (empty when undocumented).
    """

    name: str
    type: str
    default: str
    env: str
    description: str


def attribute_docs(doc: str | None) -> dict[str, str]:
    """Entries of a Google-style ``Attributes:`` section, continuation lines joined.

    Args:
        doc: A class docstring.

    Returns:
        Attribute name to its (one-line) description.
    """
    entries: dict[str, str] = {}
    lines = (doc or "").expandtabs().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "Attributes:"]
    if not starts:
        return entries
    section_indent = _indent(lines[starts[0]])
    entry_indent: int | None = None
    current = ""
    for line in lines[starts[0] + 1 :]:
        if not line.strip():
            continue
        indent = _indent(line)
        if indent <= section_indent:
            break
        entry_indent = indent if entry_indent is None else entry_indent
        match = _ENTRY.fullmatch(line.strip()) if indent == entry_indent else None
        if match is not None:
            current = match["name"]
            entries[current] = match["text"].strip()
        elif current:
            entries[current] += " " + line.strip()
    return entries


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def describe_settings(model: type[BaseSettings]) -> list[SettingDoc]:
    """Every field of ``model``, in declaration order."""
    docs = attribute_docs(model.__doc__)
    prefix = str(model.model_config.get("env_prefix", ""))
    return [
        SettingDoc(
            name=name,
            type=type_label(field),
            default=default_label(field),
            env=(prefix + name).upper(),
            description=_plain(field.description or docs.get(name, "")),
        )
        for name, field in model.model_fields.items()
    ]


def type_label(field: FieldInfo) -> str:
    """The field's type and its validated bounds, e.g. ``float ≥ 0, < 1``."""
    bounds = [
        f"{symbol} {getattr(meta, attr)}"
        for meta in field.metadata
        for kind, attr, symbol in _BOUNDS
        if isinstance(meta, kind)
    ]
    label = _annotation_label(field.annotation)
    return f"{label} {', '.join(bounds)}" if bounds else label


def _annotation_label(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        inner = [_annotation_label(a) for a in args if a is not type(None)]
        optional = " (optional)" if type(None) in args else ""
        return " | ".join(inner) + optional
    if origin in (list, tuple, set, frozenset):
        return f"list of {_annotation_label(args[0])}" if args else "list"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(str(member.value) for member in annotation)
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def default_label(field: FieldInfo) -> str:
    """The default as TOML would spell it (``unset`` for ``None``, ``required`` if none)."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "unset"
    return json.dumps(_jsonable(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return value


def _plain(text: str) -> str:
    """Docstring text for a terminal or a table cell: reST literals become markdown ones."""
    return text.replace("``", "`")


def render_markdown(docs: list[SettingDoc]) -> str:
    """A markdown table: setting (and variable), type, default, description."""
    lines = [
        "| Setting (`QFLARE_` variable) | Type | Default | Description |",
        "|---|---|---|---|",
    ]
    for doc in docs:
        cells = [f"`{doc.name}` (`{doc.env}`)", doc.type, f"`{doc.default}`", doc.description]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between :data:`README_BEGIN` and :data:`README_END` replaced.

    Raises:
        ValueError: the markers are missing.
    """
    head, begin, rest = text.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if not begin or not end:
        raise ValueError(f"markers {README_BEGIN!r} … {README_END!r} not found")
    return f"{head}{README_BEGIN}\n{block}{README_END}{tail}"


def update_readme(path: str | Path, model: type[BaseSettings] | None = None) -> bool:
    """Rewrite the generated settings table in ``path``; whether anything changed."""
    if model is None:
        from qflare.server.settings import ServerSettings

        model = ServerSettings
    readme = Path(path)
    old = readme.read_text(encoding="utf-8")
    new = replace_block(old, render_markdown(describe_settings(model)))
    if new != old:
        readme.write_text(new, encoding="utf-8")
    return new != old
