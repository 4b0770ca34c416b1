"""JSON value comparisons for fixed[x], pattern[x] and slice discriminators."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from weakref import WeakKeyDictionary

from fhir_server.model.jsonio import JsonDecimal


def _number(v: Any) -> Decimal | int | None:
    t = type(v)
    if t is int:
        return v
    if t is JsonDecimal or t is float:
        try:
            return Decimal(str.__str__(v) if t is JsonDecimal else repr(v))
        except InvalidOperation:
            return None
    return None


def json_equal(a: Any, b: Any) -> bool:
    """Equality of FHIR JSON values: exact for strings, numeric for numbers (1.0 = 1), deep."""
    ta, tb = type(a), type(b)
    if ta is dict:
        return tb is dict and a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if ta is list:
        return tb is list and len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is bool or tb is bool:
        return ta is tb and a == b
    na, nb = _number(a), _number(b)
    if na is not None or nb is not None:
        return na is not None and nb is not None and na == nb
    return isinstance(a, str) and isinstance(b, str) and str.__eq__(a, b)


def pattern_match(value: Any, pattern: Any) -> bool:
    """pattern[x] semantics: every member the pattern has, the value has alike; each item of a
    pattern array matches some item of the value's array."""
    if type(pattern) is dict:
        if type(value) is not dict:
            return False
        for k, p in pattern.items():
            v = value.get(k)
            if v is None or not pattern_match(v, p):
                return False
        return True
    if type(pattern) is list:
        items = value if type(value) is list else [value]
        return all(any(pattern_match(v, p) for v in items) for p in pattern)
    return json_equal(value, pattern)


def navigate(value: Any, segments: tuple[str, ...]) -> list[Any]:
    """The values at a dotted path below ``value`` (lists flattened; "$this" is the value itself;
    "name[x]" takes whichever ``nameType`` member is present)."""
    current = value if type(value) is list else [value]
    for seg in segments:
        if seg == "$this":
            continue
        nxt: list[Any] = []
        choice = seg[:-3] if seg.endswith("[x]") else None
        for item in current:
            if type(item) is not dict:
                continue
            if choice is None:
                v = item.get(seg)
            else:
                v = next(
                    (
                        w
                        for k, w in item.items()
                        if k.startswith(choice) and k[len(choice) : len(choice) + 1].isupper()
                    ),
                    None,
                )
            if v is None:
                continue
            if type(v) is list:
                nxt.extend(x for x in v if x is not None)
            else:
                nxt.append(v)
        current = nxt
    return current


def short(v: Any, limit: int = 80) -> str:
    from fhir_server.model import jsonio

    text = jsonio.dumps(v).decode() if not isinstance(v, str) else repr(str.__str__(v))
    return text if len(text) <= limit else text[: limit - 3] + "..."


# How generated code may do a value test's work without calling it (plan_codegen reads this):
#   ("text", text): isinstance(v, str) and str.__eq__(v, text)
#   ("parts", ((key, test), ...)): v is a dict, and each v.get(key) is not None and passes its test
#   ("list", (test, ...)): each test passes on some item of v (v itself when not a list)
# Weak keys: a test lives as long as the plans that use it.
TEST_SHAPES: WeakKeyDictionary[Callable[[Any], bool], tuple[Any, ...]] = WeakKeyDictionary()


def value_test(expected: Any, exact: bool) -> Callable[[Any], bool]:
    """``json_equal(v, expected)`` (exact) or ``pattern_match(v, expected)`` as a closure built once:
    the common shapes (a string, a Coding or CodeableConcept pattern) test without recursion."""
    if isinstance(expected, str) and _number(expected) is None:
        text = str.__str__(expected)
        same: Callable[[Any], bool] = lambda v: isinstance(v, str) and str.__eq__(v, text)  # noqa: E731
        TEST_SHAPES[same] = ("text", text)
        return same
    if exact or type(expected) is not dict:
        return (lambda v: json_equal(v, expected)) if exact else (lambda v: pattern_match(v, expected))
    parts = tuple(
        (k, value_test(p, False) if type(p) is not list else _list_test(p)) for k, p in expected.items()
    )

    def test(v: Any) -> bool:
        if type(v) is not dict:
            return False
        for k, sub in parts:
            x = v.get(k)
            if x is None or not sub(x):
                return False
        return True

    TEST_SHAPES[test] = ("parts", parts)
    return test


def _list_test(pattern: list[Any]) -> Callable[[Any], bool]:
    subs = tuple(value_test(p, False) for p in pattern)

    def test(v: Any) -> bool:
        items = v if type(v) is list else (v,)
        for sub in subs:
            for x in items:
                if sub(x):
                    break
            else:
                return False
        return True

    TEST_SHAPES[test] = ("list", subs)
    return test
