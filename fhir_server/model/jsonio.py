"""FHIR JSON in and out, exact to the byte for numbers.

``loads`` keeps every JSON number with a fraction or exponent as ``JsonDecimal`` (a ``str``
subclass holding the literal) so that ``1.50`` is stored and served as ``1.50``; orjson writes
it back verbatim through ``orjson.Fragment``.  The validator tells decimals from strings by type.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson


class JsonDecimal(str):
    """The literal text of a JSON number that had a fraction or an exponent (or was too large)."""

    __slots__ = ()


def _parse_int(text: str) -> int | JsonDecimal:
    # orjson cannot write integers beyond 64 bits; keep such literals verbatim.
    return int(text) if len(text) < 19 else JsonDecimal(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decoder = json.JSONDecoder(parse_float=JsonDecimal, parse_int=_parse_int, parse_constant=_reject_constant)


def loads(data: bytes | str) -> Any:
    """Parse JSON, keeping decimal literals exact. Raises ValueError on malformed input."""
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data).decode("utf-8")
    if data[:1] == "\ufeff":
        data = data[1:]
    try:
        return _decoder.decode(data)
    except RecursionError:
        raise ValueError("JSON nesting is too deep") from None


def _default(obj: Any) -> Any:
    if isinstance(obj, JsonDecimal):
        return orjson.Fragment(str.__str__(obj))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


_OPTS = orjson.OPT_PASSTHROUGH_SUBCLASS


def dumps(obj: Any, *, pretty: bool = False) -> bytes:
    return orjson.dumps(obj, default=_default, option=_OPTS | (orjson.OPT_INDENT_2 if pretty else 0))


def clone(value: Any) -> Any:
    """A deep copy of a JSON tree as ``loads`` makes them (JsonDecimal, an immutable str, is shared).

    Hand-rolled rather than copy.deepcopy: JSON trees hold only dicts, lists and immutables."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def number_value(value: Any) -> Decimal | None:
    """The numeric value of a JSON number (int, float or JsonDecimal); None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, JsonDecimal):
            return Decimal(str.__str__(value))
        if isinstance(value, int):
            return Decimal(value)
        if isinstance(value, float):
            return Decimal(repr(value))
    except InvalidOperation:
        return None
    return None
