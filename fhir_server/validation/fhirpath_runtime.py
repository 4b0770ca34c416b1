"""What code generated from FHIRPath calls at run time: FHIRPath values and operators over JSON.

Collections are Python lists of JSON values (``dict``, ``str``, ``int``, ``bool``, ``JsonDecimal``)
and of the values FHIRPath computes (``Decimal``, ``str``, ...).  The shared results ``_T``, ``_F``
and ``_E`` are never mutated: nothing here changes a collection it did not create.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_server.model.jsonio import JsonDecimal

Coll = list[Any]

_T: list[Any] = [True]
_F: list[Any] = [False]
_E: list[Any] = []


class Unsupported(Exception):
    """The expression uses something this compiler does not take: use the reference engine."""


class _NoValue:
    """A primitive present only through its extensions (``"_birthDate": {...}``): it exists but has
    no value, as in FHIRPath."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE = _NoValue()


# ------------------------------------------------------------------------------------------------
# Runtime helpers the generated code calls


def _truth(coll: Coll) -> bool | None:
    if not coll:
        return None
    if len(coll) == 1:
        v = coll[0]
        return v if type(v) is bool else True
    return True


def _num(v: Any) -> int | Decimal | None:
    t = type(v)
    if t is int:
        return v
    if t is JsonDecimal or t is float:
        try:
            return Decimal(str.__str__(v) if t is JsonDecimal else repr(v))
        except InvalidOperation:
            return None
    if t is Decimal:
        return v
    return None


def _plain_eq(a: Any, b: Any) -> bool | None:
    if a is NO_VALUE or b is NO_VALUE:
        return None
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    na, nb = _num(a), _num(b)
    if na is not None or nb is not None:
        return na is not None and nb is not None and na == nb
    if isinstance(a, str) and isinstance(b, str):
        return str.__eq__(a, b)
    if ta is dict and tb is dict:
        return _deep_eq(a, b)
    return False


def _deep_eq(a: Any, b: Any) -> bool:
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_deep_eq(a[k], b[k]) for k in a)
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(_deep_eq(x, y) for x, y in zip(a, b, strict=True))
    return _plain_eq(a, b) is True


_DT = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _date_parts(s: str) -> tuple[list[int], int | None] | None:
    m = _DT.fullmatch(s)
    if m is None:
        return None
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    parts = [int(x) for x in (y, mo, d, h, mi) if x is not None]
    if sec is not None:
        parts.append(int(sec) * 1000 + int((frac or "0")[:3].ljust(3, "0")))
    offset = None
    if tz is not None:
        offset = 0 if tz == "Z" else (1 if tz[0] == "+" else -1) * (int(tz[1:3]) * 60 + int(tz[4:6]))
    return parts, offset


def _to_utc(parts: list[int], offset: int) -> list[int]:
    ms = parts[5] if len(parts) > 5 else 0
    dt = datetime(parts[0], parts[1], parts[2], parts[3], parts[4] if len(parts) > 4 else 0, tzinfo=UTC)
    dt -= timedelta(minutes=offset)
    out = [dt.year, dt.month, dt.day, dt.hour, dt.minute]
    return out[: len(parts)] + ([ms] if len(parts) > 5 else [])


def _date_cmp(a: Any, b: Any) -> int | None:
    """-1/0/1, or None when the precisions differ and the common part is equal (FHIRPath)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return None
    # Fast path: same shape and same zone suffix, so the text order is the time order.
    if len(a) == len(b) and (
        len(a) <= 10 or a[19:] == b[19:] or (a[-1] == "Z" and b[-1] == "Z" and len(a) == 20)
    ):
        return (a > b) - (a < b)
    pa, pb = _date_parts(a), _date_parts(b)
    if pa is None or pb is None:
        return None
    (xa, oa), (xb, ob) = pa, pb
    if len(xa) >= 4 and len(xb) >= 4 and oa is not None and ob is not None:
        xa, xb = _to_utc(xa, oa), _to_utc(xb, ob)
    for u, v in zip(xa, xb, strict=False):
        if u != v:
            return -1 if u < v else 1
    return 0 if len(xa) == len(xb) else None


def _cmp(a: Any, b: Any, dates: bool) -> int | None:
    if a is NO_VALUE or b is NO_VALUE:
        return None
    if dates:
        return _date_cmp(a, b)
    na, nb = _num(a), _num(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    if isinstance(a, str) and isinstance(b, str) and na is None and nb is None:
        return (a > b) - (a < b)
    return None


def _quantity_cmp(a: Any, b: Any) -> int | None:
    # Same unit only: there is no UCUM conversion here, so other pairs compare as unknown (empty).
    if type(a) is not dict or type(b) is not dict:
        return None
    ua = (a.get("system"), a.get("code")) if "code" in a else (None, a.get("unit"))
    ub = (b.get("system"), b.get("code")) if "code" in b else (None, b.get("unit"))
    if ua != ub or a.get("comparator") or b.get("comparator"):
        return None
    return _cmp(a.get("value"), b.get("value"), False)


def _distinct(items: Coll) -> Coll:
    out: Coll = []
    for x in items:
        if not any(_plain_eq(x, y) is True for y in out):
            out.append(x)
    return out


def _to_string(v: Any) -> str | None:
    if type(v) is bool:
        return "true" if v else "false"
    if isinstance(v, str):
        return str.__str__(v)
    n = _num(v)
    return None if n is None else str(n)


def _children(items: Coll) -> Coll:
    out: Coll = []
    for item in items:
        if type(item) is dict:
            for k, v in item.items():
                if k == "resourceType" or k[:1] == "_":
                    continue
                if type(v) is list:
                    out.extend(v)
                else:
                    out.append(v)
    return out


def _eq(a: Coll, b: Coll, dates: bool, negate: bool) -> Coll:
    if not a or not b:
        return _E
    if len(a) != len(b):
        return _T if negate else _F
    for u, v in zip(a, b, strict=True):
        if dates:
            c = _date_cmp(u, v)
            r = None if c is None else c == 0
        else:
            r = _plain_eq(u, v)
        if r is None:
            return _E
        if not r:
            return _T if negate else _F
    return _F if negate else _T


_INEQ: tuple[Callable[[int], bool], ...] = (
    lambda c: c < 0, lambda c: c > 0, lambda c: c <= 0, lambda c: c >= 0,
)  # fmt: skip
_INEQ_OPS = {"<": 0, ">": 1, "<=": 2, ">=": 3}


def _ineq(a: Coll, b: Coll, op: int, kind: str) -> Coll:
    if len(a) != 1 or len(b) != 1:
        return _E
    c = _quantity_cmp(a[0], b[0]) if kind == "q" else _cmp(a[0], b[0], kind == "d")
    if c is None:
        return _E
    return _T if _INEQ[op](c) else _F


def _in(a: Coll, b: Coll) -> Coll:
    if not a:
        return _E
    if len(a) > 1:
        raise Unsupported("membership test of several items")
    x = a[0]
    for y in b:
        if _plain_eq(x, y) is True:
            return _T
    return _F


def _add(a: Coll, b: Coll, op: str) -> Coll:
    if op == "&":
        sa = _to_string(a[0]) if len(a) == 1 else ""
        sb = _to_string(b[0]) if len(b) == 1 else ""
        return [(sa or "") + (sb or "")]
    if len(a) != 1 or len(b) != 1:
        return _E
    u, v = a[0], b[0]
    if isinstance(u, str) and isinstance(v, str) and _num(u) is None and _num(v) is None:
        return [str.__str__(u) + str.__str__(v)] if op == "+" else _E
    nu, nv = _num(u), _num(v)
    if nu is None or nv is None:
        return _E
    return [nu + nv if op == "+" else nu - nv]


def _mul(a: Coll, b: Coll, op: str) -> Coll:
    if len(a) != 1 or len(b) != 1:
        return _E
    u, v = _num(a[0]), _num(b[0])
    if u is None or v is None:
        return _E
    if op == "*":
        return [u * v]
    if v == 0:
        return _E
    if op == "/":
        return [Decimal(u) / Decimal(v)]
    if op == "div":
        return [int(u // v)]
    return [u % v]


def _neg(a: Coll) -> Coll:
    if len(a) != 1:
        return _E
    v = _num(a[0])
    return _E if v is None else [-v]


def _index(a: Coll, i: Coll) -> Coll:
    if len(i) != 1 or type(i[0]) is not int or not 0 <= i[0] < len(a):
        return _E
    return [a[i[0]]]


def _dyn_member(src: Coll, name: str) -> Coll:
    # A member of a value of unknown type: a choice element shows as name + Type.
    n = len(name)
    out: Coll = []
    for item in src:
        if type(item) is not dict:
            continue
        v = item.get(name)
        if v is None:
            for k, w in item.items():
                if len(k) > n and k.startswith(name) and k[n].isupper():
                    v = w
                    break
            else:
                continue
        if type(v) is list:
            out.extend(v)
        else:
            out.append(v)
    return out


def _single(a: Coll) -> Coll:
    if len(a) > 1:
        raise Unsupported("single() on several items")
    return a


def _agg(a: Coll, name: str) -> Coll:
    want = name.endswith("True")
    hits = [v is want for v in a if type(v) is bool]
    return _T if (all(hits) if name.startswith("all") else any(hits)) else _F


def _strfn(a: Coll, name: str) -> Coll:
    if len(a) != 1:
        return _E
    x = a[0]
    s = _to_string(x)
    if s is None:
        return _E
    if name == "toString":
        return [s]
    if name == "length":
        return [len(s)] if isinstance(x, str) else _E
    if name == "lower":
        return [s.lower()]
    if name == "upper":
        return [s.upper()]
    if type(x) is int:
        return [x]
    return [int(s)] if re.fullmatch(r"[+-]?[0-9]+", s) else _E


_REGEX: dict[str, re.Pattern[str]] = {}


def _strop(a: Coll, b: Coll, name: str) -> Coll:
    if len(a) != 1 or len(b) != 1 or not isinstance(a[0], str) or not isinstance(b[0], str):
        return _E
    s, p = str.__str__(a[0]), str.__str__(b[0])
    if name == "matches":
        rx = _REGEX.get(p)
        if rx is None:
            rx = _REGEX[p] = re.compile(p, re.DOTALL)
        return _T if rx.search(s) is not None else _F
    if name == "startsWith":
        return _T if s.startswith(p) else _F
    if name == "endsWith":
        return _T if s.endswith(p) else _F
    return _T if p in s else _F


def _substring(a: Coll, start: Coll, length: Coll | None) -> Coll:
    if len(a) != 1 or not isinstance(a[0], str):
        return _E
    s = str.__str__(a[0])
    if len(start) != 1 or type(start[0]) is not int or not 0 <= start[0] < len(s):
        return _E
    if length is None:
        return [s[start[0] :]]
    if len(length) != 1 or type(length[0]) is not int:
        return _E
    return [s[start[0] : start[0] + max(length[0], 0)]]


def _setop(a: Coll, b: Coll, name: str) -> Coll:
    if name == "combine":
        return a + b
    if name == "union":
        return _distinct(a + b)
    if name == "intersect":
        return _distinct([u for u in a if any(_plain_eq(u, v) is True for v in b)])
    return [u for u in a if not any(_plain_eq(u, v) is True for v in b)]


def _descendants(a: Coll) -> Coll:
    out: Coll = []
    level = _children(a)
    while level:
        out.extend(level)
        level = _children(level)
    return out


def _resolve(a: Coll, root: Any) -> Coll:
    # Only contained resources: an invariant cannot read the server.
    contained = root.get("contained") if type(root) is dict else None
    out: Coll = []
    for ref in a:
        target = ref.get("reference") if type(ref) is dict else ref
        if isinstance(target, str) and target[:1] == "#" and type(contained) is list:
            out.extend(c for c in contained if type(c) is dict and c.get("id") == target[1:])
    return out


def _repeat(a: Coll, step: Callable[[Any, Any], Coll], root: Any) -> Coll:
    out: Coll = []
    seen: set[int] = set()
    level = a
    while level:
        nxt: Coll = []
        for x in level:
            for y in step(x, root):
                if id(y) not in seen:
                    seen.add(id(y))
                    out.append(y)
                    nxt.append(y)
        level = nxt
    return out


# The names generated code may use.
RUNTIME = {
    name: value
    for name, value in dict(globals()).items()
    if name.startswith("_") and not name.startswith("__") and (callable(value) or isinstance(value, list))
} | {"NO_VALUE": NO_VALUE, "Unsupported": Unsupported}

__all__ = ["NO_VALUE", "RUNTIME", "Coll", "Unsupported"]
