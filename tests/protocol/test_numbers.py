"""Every float a peer can send is declared ``Finite``: NaN and the infinities do not decode."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import msgspec
import msgspec.inspect as mi
import pytest

import qflare.ledger
import qflare.protocol
from qflare.protocol.numbers import Finite


class Probe(msgspec.Struct):
    x: Finite


def _structs() -> Iterator[type[msgspec.Struct]]:
    for package in (qflare.protocol, qflare.ledger):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for obj in vars(module).values():
                if (
                    isinstance(obj, type)
                    and issubclass(obj, msgspec.Struct)
                    and obj.__module__ == info.name
                ):
                    yield obj


def _floats(kind: mi.Type) -> Iterator[mi.FloatType]:
    if isinstance(kind, mi.FloatType):
        yield kind
    elif isinstance(kind, mi.UnionType):
        for member in kind.types:
            yield from _floats(member)


def test_every_float_field_of_a_message_is_finite():
    loose = []
    for struct in _structs():
        info = mi.type_info(struct)
        assert isinstance(info, mi.StructType)
        for field in info.fields:
            for kind in _floats(field.type):
                if kind.ge is None or kind.le is None:
                    loose.append(f"{struct.__module__}.{struct.__qualname__}.{field.name}")
    assert not loose, f"declare these Finite: {loose}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_finite_refuses_what_is_not_a_number(value):
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"x": value}), type=Probe)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode({"x": 1.5}), type=Probe).x == 1.5
