"""Write-time search index extraction: a resource in, typed index rows out.

Every parameter of a type is compiled once (``compile_type``, cached per process) into a plan:
the compiled FHIRPath expression and, per FHIR type the expression can yield, the function that
turns such a value into rows.  Indexing a resource then runs the plans and nothing else.

Rows are ``(kind, row)`` with the columns of the ``idx_<kind>`` tables minus pid and res_type
(see the row contract in ``Indexer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

from fhir_server.model.facts import get_facts
from fhir_server.search.code_case import index_code
from fhir_server.search.fhirpath import Compiled, FhirPathError, Item, compile_expression
from fhir_server.search.normalize import (
    DATE_MAX_MS,
    DATE_MIN_MS,
    NUMBER_MAX,
    NUMBER_MIN,
    QUANTITY_CODE_MAX,
    STRING_EXACT_MAX,
    TOKEN_CODE_MAX,
    TOKEN_SYSTEM_MAX,
    URI_MAX,
    date_range,
    norm,
    parse_reference,
    to_decimal,
)
from fhir_server.search.params import near, sequence
from fhir_server.search.registry import COLUMN_PARAMS, ComponentDef, SearchParamDef, definitions

Row = dict[str, Any]
Out = list[tuple[str, Row]]
# (param code, JSON value, rows to append to, indexer) -> None
Maker = Callable[[str, Any, Out, "Indexer"], None]

ISO_4217 = "urn:iso:std:iso:4217"
# What index rows a resource gets.  Bump it whenever extraction changes for resources already
# stored (a new parameter, another row format): a database indexed by an older version answers
# searches from stale rows until `fhir-server reindex`, which the server then asks for at start.
# 2: open Range ends, [v, v] number rows, folded case-insensitive codes, near, 3-part composites.
INDEX_VERSION = 2

_STRINGY = ("string", "markdown", "code", "id", "uri", "url", "canonical", "oid", "uuid")
_INTEGERS = ("integer", "positiveInt", "unsignedInt")
_QUANTITIES = ("Quantity", "Age", "Count", "Distance", "Duration")


# ---------------------------------------------------------------------------------------------
# Row constructors: one place per kind, so that a kind's rows always have the same key order
# (deduplication compares the values).


def _string_row(param: str, text: Any, out: Out) -> None:
    if not isinstance(text, str):
        return
    normed = norm(text)
    if normed:
        out.append(("string", {"param": param, "value_norm": normed, "value_exact": text[:STRING_EXACT_MAX]}))


def _token_row(param: str, system: Any, code: Any, text: Any, out: Out) -> None:
    system = system[:TOKEN_SYSTEM_MAX] if isinstance(system, str) and system else None
    code = code[:TOKEN_CODE_MAX] if isinstance(code, str) and code else None
    text_norm = (norm(text) or None) if isinstance(text, str) else None
    if system is None and code is None and text_norm is None:
        return
    out.append(("token", {"param": param, "system": system, "code": code, "text_norm": text_norm}))


def _date_row(param: str, lo: int, hi: int, out: Out) -> None:
    out.append(("date", {"param": param, "lo_ms": lo, "hi_ms": hi}))


def _quantity_row(
    param: str, system: Any, code: Any, unit: Any, lo: Decimal, hi: Decimal, out: Out
) -> None:
    out.append(("quantity", {
        "param": param,
        "system": system[:TOKEN_SYSTEM_MAX] if isinstance(system, str) and system else None,
        "code": code[:QUANTITY_CODE_MAX] if isinstance(code, str) and code else None,
        "unit": unit[:QUANTITY_CODE_MAX] if isinstance(unit, str) and unit else None,
        "lo": lo,
        "hi": hi,
    }))


def _uri_row(param: str, uri: Any, out: Out) -> None:
    if isinstance(uri, str) and uri:
        out.append(("uri", {"param": param, "uri": uri[:URI_MAX]}))


# ---------------------------------------------------------------------------------------------
# string


def _s_primitive(param: str, v: Any, out: Out, ix: Indexer) -> None:
    _string_row(param, v, out)


def _s_parts(*singles: str, lists: tuple[str, ...]) -> Maker:
    def parts(param: str, v: Any, out: Out, ix: Indexer) -> None:
        if type(v) is not dict:
            return
        for key in lists:
            items = v.get(key)
            if type(items) is list:
                for text in items:
                    _string_row(param, text, out)
        for key in singles:
            text = v.get(key)
            if text is not None:
                _string_row(param, text, out)

    return parts


_STRING: dict[str, Maker] = {t: _s_primitive for t in _STRINGY}
_STRING["HumanName"] = _s_parts("family", "text", lists=("given", "prefix", "suffix"))
_STRING["Address"] = _s_parts("city", "district", "state", "postalCode", "country", "text", lists=("line",))


# ---------------------------------------------------------------------------------------------
# token


# A Coding's code is folded when its system is case-insensitive (code_case.py); the values of
# Identifiers and ContactPoints never are.


def _t_coding(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is dict:
        system = v.get("system")
        _token_row(param, system, index_code(system, v.get("code")), v.get("display"), out)


def _t_concept(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is not dict:
        return
    codings = v.get("coding")
    if type(codings) is list:
        for c in codings:
            if type(c) is dict:
                system = c.get("system")
                _token_row(param, system, index_code(system, c.get("code")), c.get("display"), out)
    text = v.get("text")
    if text:
        _token_row(param, None, None, text, out)


def _t_identifier(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is not dict:
        return
    value = v.get("value")
    typ = v.get("type")
    typ = typ if type(typ) is dict else {}
    _token_row(param, v.get("system"), value, typ.get("text"), out)
    codings = typ.get("coding")
    if value and type(codings) is list:
        # :of-type matches type.coding system + code together with the value.
        for c in codings:
            if type(c) is dict and c.get("code"):
                _token_row(f"{param}:of-type", c.get("system"), f"{c['code']}|{value}", None, out)


def _t_contact(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is dict:
        _token_row(param, v.get("system"), v.get("value"), None, out)


def _t_primitive(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if v is True or v is False:
        _token_row(param, None, "true" if v else "false", None, out)
    elif isinstance(v, str | int):
        _token_row(param, None, str(v), None, out)


_TOKEN: dict[str, Maker] = {t: _t_primitive for t in (*_STRINGY, "boolean", *_INTEGERS)}
_TOKEN.update(Coding=_t_coding, CodeableConcept=_t_concept, Identifier=_t_identifier, ContactPoint=_t_contact)


# ---------------------------------------------------------------------------------------------
# date


def _d_primitive(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if isinstance(v, str):
        r = date_range(v)
        if r is not None:
            _date_row(param, r[0], r[1], out)


def _period_range(v: Any) -> tuple[int, int] | None:
    if type(v) is not dict:
        return None
    start, end = v.get("start"), v.get("end")
    lo_r = date_range(start) if isinstance(start, str) else None
    hi_r = date_range(end) if isinstance(end, str) else None
    if lo_r is None and hi_r is None:
        return None
    return (lo_r[0] if lo_r else DATE_MIN_MS), (hi_r[1] if hi_r else DATE_MAX_MS)


def _d_period(param: str, v: Any, out: Out, ix: Indexer) -> None:
    r = _period_range(v)
    if r is not None:
        _date_row(param, r[0], r[1], out)


def _d_timing(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is not dict:
        return
    events = v.get("event")
    if type(events) is list:
        for e in events:
            _d_primitive(param, e, out, ix)
    repeat = v.get("repeat")
    if type(repeat) is dict:
        _d_period(param, repeat.get("boundsPeriod"), out, ix)


_DATE: dict[str, Maker] = {
    "date": _d_primitive, "dateTime": _d_primitive, "instant": _d_primitive,
    "Period": _d_period, "Timing": _d_timing,
}


# ---------------------------------------------------------------------------------------------
# number and quantity


# A number or quantity row holds the closed interval [lo, hi] the target covers: a plain value v
# as [v, v] (its own precision plays no part: R4 search.html#number compares with the exact stored
# value), a Range as [low, high].  One interval test then serves both (search_sql.number_clause).


def _n_primitive(param: str, v: Any, out: Out, ix: Indexer) -> None:
    d = to_decimal(v)
    if d is not None:
        out.append(("number", {"param": param, "lo": d, "hi": d}))


def _range_bounds(v: Any) -> tuple[Decimal, Decimal, dict[str, Any]] | None:
    """A Range's [low, high] and the quantity that names its unit.

    A missing end is unbounded (NUMBER_MIN / NUMBER_MAX), as a Period's is: R4 datatypes.html#Range
    "if the low or high elements are missing, the meaning is that the low or high boundaries are not
    known".  A Range with neither value gives no row, so :missing=true finds it."""
    if type(v) is not dict:
        return None
    low, high = v.get("low"), v.get("high")
    low = low if type(low) is dict else {}
    high = high if type(high) is dict else {}
    lo = to_decimal(low.get("value"))
    hi = to_decimal(high.get("value"))
    if lo is None and hi is None:
        return None
    return (NUMBER_MIN if lo is None else lo), (NUMBER_MAX if hi is None else hi), (high if lo is None else low)


def _n_range(param: str, v: Any, out: Out, ix: Indexer) -> None:
    b = _range_bounds(v)
    if b is not None:
        out.append(("number", {"param": param, "lo": b[0], "hi": b[1]}))


def _q_quantity(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is dict:
        d = to_decimal(v.get("value"))
        if d is not None:
            _quantity_row(param, v.get("system"), v.get("code"), v.get("unit"), d, d, out)


def _q_money(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is dict:
        d = to_decimal(v.get("value"))
        if d is not None:
            _quantity_row(param, ISO_4217, v.get("currency"), None, d, d, out)


def _q_range(param: str, v: Any, out: Out, ix: Indexer) -> None:
    b = _range_bounds(v)
    if b is not None:
        q = b[2]
        _quantity_row(param, q.get("system"), q.get("code"), q.get("unit"), b[0], b[1], out)


_NUMBER: dict[str, Maker] = {t: _n_primitive for t in ("decimal", *_INTEGERS)}
_NUMBER["Range"] = _n_range
_QUANTITY: dict[str, Maker] = {t: _q_quantity for t in _QUANTITIES}
_QUANTITY.update(Money=_q_money, Range=_q_range)


# ---------------------------------------------------------------------------------------------
# reference and uri


def _r_reference(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is not dict:
        return
    ref = v.get("reference")
    if isinstance(ref, str):
        parsed = parse_reference(ref, ix.base_url, ix.resource_types)
        if parsed is not None:
            out.append(("reference", {
                "param": param, "target_type": parsed[0], "target_id": parsed[1], "url": parsed[2],
            }))
    ident = v.get("identifier")
    if type(ident) is dict:
        # Rows for the :identifier modifier live in the token table.
        _token_row(f"{param}:identifier", ident.get("system"), ident.get("value"), None, out)


def _r_canonical(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if isinstance(v, str) and v:
        out.append(("reference", {
            "param": param, "target_type": None, "target_id": None, "url": v.partition("|")[0],
        }))


def _r_uri(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if isinstance(v, str) and v:
        out.append(("reference", {"param": param, "target_type": None, "target_id": None, "url": v}))


def _u_uri(param: str, v: Any, out: Out, ix: Indexer) -> None:
    _uri_row(param, v, out)


def _u_canonical(param: str, v: Any, out: Out, ix: Indexer) -> None:
    # Indexed with and without |version: a search names either form.
    if isinstance(v, str) and v:
        _uri_row(param, v, out)
        if "|" in v:
            _uri_row(param, v.partition("|")[0], out)


_REFERENCE: dict[str, Maker] = {
    "Reference": _r_reference, "canonical": _r_canonical, "uri": _r_uri, "url": _r_uri,
}
_URI: dict[str, Maker] = {t: _u_uri for t in ("uri", "url", "oid", "uuid")}
_URI["canonical"] = _u_canonical

MAKERS: dict[str, dict[str, Maker]] = {
    "string": _STRING, "token": _TOKEN, "date": _DATE, "number": _NUMBER,
    "quantity": _QUANTITY, "reference": _REFERENCE, "uri": _URI,
}


# ---------------------------------------------------------------------------------------------
# special parameters: only those listed here are indexed, by definition URL


def _g_position(param: str, v: Any, out: Out, ix: Indexer) -> None:
    p = near.position(v)
    if p is not None:
        out.append(("geo", {"param": param, "lat": p[0], "lon": p[1]}))


SPECIAL: dict[str, dict[str, Maker]] = {near.URL: {"Location.position": _g_position}}


# ---------------------------------------------------------------------------------------------
# composite components: values as tuples, then the cross product


def _pair(system: Any, code: Any) -> tuple[str | None, str] | None:
    if not isinstance(code, str) or not code:
        return None
    return (system[:TOKEN_SYSTEM_MAX] if isinstance(system, str) and system else None), code[:TOKEN_CODE_MAX]


def _c1_pairs(t: str, v: Any) -> list[tuple[str | None, str]]:
    """(system, code) of a token value; a text-only value can't be the code half of code$value."""
    found: list[tuple[str | None, str] | None]
    if t == "CodeableConcept":
        codings = v.get("coding") if type(v) is dict else None
        if type(codings) is not list:
            return []
        found = [_pair(c.get("system"), index_code(c.get("system"), c.get("code")))
                 for c in codings if type(c) is dict]
    elif t == "Coding":
        found = [_pair(v.get("system"), index_code(v.get("system"), v.get("code")))] if type(v) is dict else []
    elif t in ("Identifier", "ContactPoint"):
        found = [_pair(v.get("system"), v.get("value"))] if type(v) is dict else []
    elif v is True or v is False:
        found = [(None, "true" if v else "false")]
    elif t in _TOKEN and isinstance(v, str | int):
        found = [_pair(None, str(v))]
    else:
        return []
    return [p for p in found if p is not None]


C2 = tuple[str | None, str | None, Decimal | None, Decimal | None]


def _c2_token(t: str, v: Any) -> list[C2]:
    return [(s, c, None, None) for s, c in _c1_pairs(t, v)]


def _c2_quantity(t: str, v: Any) -> list[C2]:
    rows: Out = []
    maker = _QUANTITY.get(t)
    if maker is not None:
        maker("", v, rows, _NO_INDEXER)
    return [(r["system"], r["code"], r["lo"], r["hi"]) for _, r in rows]


def _c2_date(t: str, v: Any) -> list[C2]:
    rows: Out = []
    maker = _DATE.get(t)
    if maker is not None:
        maker("", v, rows, _NO_INDEXER)
    return [(None, None, Decimal(r["lo_ms"]), Decimal(r["hi_ms"])) for _, r in rows]


def _c2_string(t: str, v: Any) -> list[C2]:
    rows: Out = []
    maker = _STRING.get(t)
    if maker is not None:
        maker("", v, rows, _NO_INDEXER)
    return [(None, r["value_norm"], None, None) for _, r in rows]


def _c2_number(t: str, v: Any) -> list[C2]:
    rows: Out = []
    maker = _NUMBER.get(t)
    if maker is not None:
        maker("", v, rows, _NO_INDEXER)
    return [(None, None, r["lo"], r["hi"]) for _, r in rows]


_C2: dict[str, tuple[Callable[[str, Any], list[C2]], dict[str, Maker]]] = {
    "token": (_c2_token, _TOKEN), "quantity": (_c2_quantity, _QUANTITY), "date": (_c2_date, _DATE),
    "string": (_c2_string, _STRING), "number": (_c2_number, _NUMBER),
}
# A third component is held as a range only (c3_lo, c3_hi).
_C3 = {"number": _C2["number"], "date": _C2["date"]}

# (system, code) of a first component's value: a token's, or a reference's (target type, id),
# (None, url) for another server's or a urn: reference, as the reference index keeps them.
First = Callable[[str, Any, "Indexer"], list[tuple[str | None, str]]]


def _c1_token(t: str, v: Any, ix: Indexer) -> list[tuple[str | None, str]]:
    return _c1_pairs(t, v)


def _c1_reference(t: str, v: Any, ix: Indexer) -> list[tuple[str | None, str]]:
    ref = v.get("reference") if t == "Reference" and type(v) is dict else None
    parsed = parse_reference(ref, ix.base_url, ix.resource_types) if isinstance(ref, str) else None
    if parsed is None:
        return []
    target_type, target_id, url = parsed
    if target_id is not None:
        return [(target_type, target_id)]
    return [(None, url[:TOKEN_CODE_MAX])] if url else []


_FIRST: dict[str, tuple[First, frozenset[str]]] = {
    "token": (_c1_token, frozenset(_TOKEN)), "reference": (_c1_reference, frozenset({"Reference"})),
}


# ---------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True, slots=True)
class _Plan:
    code: str
    expr: Compiled
    makers: dict[str, Maker]

    def run(self, root: list[Item], out: Out, ix: Indexer) -> None:
        makers = self.makers
        code = self.code
        for t, v in self.expr.fn(root):
            maker = makers.get(t)
            if maker is not None:
                maker(code, v, out, ix)


@dataclass(frozen=True, slots=True)
class _CompositePlan:
    """Rows of the cross product of the components' values within each item of ``expr``.

    A component whose expression starts with ``%resource.`` reads the resource, not the item
    (``on_root``).  ``shift`` (MolecularSequence coordinates) is added to the second component's
    range; when it is None for a resource, that resource gets no rows."""

    code: str
    expr: Compiled
    c1: Compiled
    c2: Compiled
    c2_values: Callable[[str, Any], list[C2]]
    c1_values: First
    c3: Compiled | None = None
    c3_values: Callable[[str, Any], list[C2]] | None = None
    on_root: tuple[bool, bool, bool] = (False, False, False)
    shift: Callable[[Any], Decimal | None] | None = None

    @property
    def parts(self) -> tuple[Compiled, ...]:
        return (self.c1, self.c2) if self.c3 is None else (self.c1, self.c2, self.c3)

    def run(self, root: list[Item], out: Out, ix: Indexer) -> None:
        shift: Decimal | None = None
        if self.shift is not None:
            shift = self.shift(root[0][1])
            if shift is None:
                return
        first_root, second_root, third_root = self.on_root
        for item in self.expr.fn(root):
            focus = [item]
            # The value half is absent more often (code-value-date on a Quantity observation).
            seconds = [x for t, v in self.c2.fn(root if second_root else focus) for x in self.c2_values(t, v)]
            if not seconds:
                continue
            if shift:
                seconds = [(s, k, None if lo is None else lo + shift, None if hi is None else hi + shift)
                           for s, k, lo, hi in seconds]
            thirds: list[tuple[Decimal | None, Decimal | None]] | None = None
            if self.c3 is not None and self.c3_values is not None:
                c3_values = self.c3_values
                thirds = [(x[2], x[3]) for t, v in self.c3.fn(root if third_root else focus) for x in c3_values(t, v)]
                if not thirds:
                    continue
            firsts = [p for t, v in self.c1.fn(root if first_root else focus) for p in self.c1_values(t, v, ix)]
            for s1, k1 in firsts:
                for s2, k2, lo, hi in seconds:
                    row = {"param": self.code, "c1_system": s1, "c1_code": k1,
                           "c2_system": s2, "c2_code": k2, "c2_lo": lo, "c2_hi": hi}
                    if thirds is None:
                        out.append(("composite", row))
                        continue
                    for lo3, hi3 in thirds:
                        out.append(("composite", {**row, "c3_lo": lo3, "c3_hi": hi3}))


@dataclass(frozen=True, slots=True)
class _InlinePlan:
    """A reference parameter whose expression yields resources held inside this one (Bundle's
    ``composition`` and ``message``: ``Bundle.entry[0].resource``).  Such a resource is indexed
    with its own type's parameters, each row's param prefixed ``<code>.``, so that
    ``composition.subject=...`` is an index look-up on the Bundle; a marker row (token ``<code>``,
    code = the inline resource's type) records that one of the target types is there."""

    code: str
    expr: Compiled
    targets: frozenset[str]

    def run(self, root: list[Item], out: Out, ix: Indexer) -> None:
        for _, v in self.expr.fn(root):
            rt = v.get("resourceType") if type(v) is dict else None
            if rt not in self.targets:
                continue
            out.append(("token", {"param": self.code, "system": None, "code": rt, "text_norm": None}))
            typed = compile_type(rt)
            inner: Out = []
            inner_root: list[Item] = [(rt, v)]
            # Column parameters too: the inline resource has no row of the resource table.
            for plan in (*typed.plans, *typed.columns):
                plan.run(inner_root, inner, ix)
            prefix = self.code + "."
            for kind, row in inner:
                row["param"] = prefix + row["param"]
                out.append((kind, row))


AnyPlan = _Plan | _CompositePlan | _InlinePlan


@dataclass(frozen=True, slots=True)
class TypePlan:
    plans: tuple[AnyPlan, ...]
    # code -> why it can't be indexed; column parameters (_id, _lastUpdated) are supported but
    # have no plan among ``plans``.
    unsupported: dict[str, str] = field(default_factory=dict)
    # Plans of the column parameters, from their FHIRPath: used where the type is inline.
    columns: tuple[AnyPlan, ...] = ()
    # Reference parameters whose targets are inline resources (only chained searches reach them).
    inline: frozenset[str] = frozenset()


def _compile(resource_type: str, p: SearchParamDef) -> AnyPlan:
    """Raise ValueError (with the reason) when the parameter can't be indexed faithfully."""
    if not p.expression:
        raise ValueError("no FHIRPath expression")
    if p.type == "special" and p.url not in SPECIAL:
        raise ValueError("special parameter (its matching is not an index look-up)")
    try:
        expr = compile_expression(p.expression, resource_type)
    except FhirPathError as exc:
        raise ValueError(f"FHIRPath: {exc}") from None
    if p.type == "composite":
        return _compile_composite(resource_type, p, expr)
    if p.type == "reference" and expr.types and all(_is_resource(t) for t in expr.types):
        return _compile_inline(p, expr)
    table = SPECIAL[p.url] if p.type == "special" else MAKERS.get(p.type)
    if table is None:
        raise ValueError(f"type {p.type} is not indexed")
    makers = {t: table[t] for t in expr.types if t in table}
    if not makers:
        raise ValueError(f"yields {', '.join(sorted(expr.types))}, which a {p.type} parameter can't index")
    return _Plan(p.code, expr, makers)


def _is_resource(type_code: str) -> bool:
    return type_code in ("Resource", "DomainResource") or type_code in get_facts().r4_resource_types


def _compile_inline(p: SearchParamDef, expr: Compiled) -> _InlinePlan:
    targets = frozenset(t for t in p.targets if t in definitions())
    if not targets:
        raise ValueError(f"yields {', '.join(sorted(expr.types))} of no served target type")
    return _InlinePlan(p.code, expr, targets)


def _component(c: ComponentDef, resource_type: str, item_types: frozenset[str]) -> tuple[Compiled, bool]:
    """A component's compiled expression, and whether it reads the resource (``%resource.``)."""
    try:
        if c.expression.startswith("%resource."):
            return compile_expression(c.expression[len("%resource."):], resource_type), True
        return compile_expression(c.expression, item_types), False
    except FhirPathError as exc:
        raise ValueError(f"FHIRPath in component {c.code or c.definition_url}: {exc}") from None


def _compile_composite(resource_type: str, p: SearchParamDef, expr: Compiled) -> _CompositePlan:
    comps = p.components
    if len(comps) not in (2, 3):
        raise ValueError(f"{len(comps)} components (the composite row holds 2 or 3)")
    first = _FIRST.get(comps[0].type)
    if first is None:
        raise ValueError(f"first component {comps[0].code or comps[0].definition_url} is a "
                         f"{comps[0].type or 'unknown'} parameter (the row holds a token or a reference)")
    second = _C2.get(comps[1].type)
    if second is None:
        raise ValueError(f"second component {comps[1].code} is a {comps[1].type or 'unknown'} parameter")
    third = _C3.get(comps[2].type) if len(comps) == 3 else None
    if len(comps) == 3 and third is None:
        raise ValueError(f"third component {comps[2].code} is a {comps[2].type or 'unknown'} parameter "
                         "(the row holds a number or date range)")
    c1, root1 = _component(comps[0], resource_type, expr.types)
    c2, root2 = _component(comps[1], resource_type, expr.types)
    if not c1.types & first[1]:
        raise ValueError(f"first component yields {', '.join(sorted(c1.types))}")
    if not c2.types & second[1].keys():
        raise ValueError(f"second component yields {', '.join(sorted(c2.types))}")
    c3: Compiled | None = None
    root3 = False
    if third is not None:
        c3, root3 = _component(comps[2], resource_type, expr.types)
        if not c3.types & third[1].keys():
            raise ValueError(f"third component yields {', '.join(sorted(c3.types))}")
    shift = sequence.start_shift if p.url in sequence.COORDINATE_COMPOSITES else None
    return _CompositePlan(p.code, expr, c1, c2, second[0], first[0], c3, third[0] if third else None,
                          (root1, root2, root3), shift)


@cache
def compile_type(resource_type: str) -> TypePlan:
    """The index plans of one resource type, compiled once per process."""
    params = definitions().get(resource_type, {})
    plans: list[AnyPlan] = []
    columns: list[AnyPlan] = []
    unsupported: dict[str, str] = {}
    for code, p in params.items():
        try:
            plan = _compile(resource_type, p)
        except ValueError as exc:
            unsupported[code] = str(exc)
            continue
        (columns if code in COLUMN_PARAMS else plans).append(plan)
    inline = frozenset(p.code for p in plans if isinstance(p, _InlinePlan))
    return TypePlan(tuple(plans), unsupported, tuple(columns), inline)


class Indexer:
    """Index rows of a resource, as ``(kind, row)`` pairs; kinds are the idx_<kind> tables.  Rows
    carry every column but pid and res_type:

    - string: param, value_norm (``norm``), value_exact (original text, at most 1024 chars)
    - token: param, system, code (a Coding's folded when its system is case-insensitive:
      code_case.py), text_norm; also ``<code>:of-type`` rows (code = "type|value") for typed
      identifiers and ``<code>:identifier`` rows for Reference.identifier
    - date: param, lo_ms, hi_ms (half-open epoch ms; open Period ends are -2**62 / 2**62)
    - number: param, lo, hi (Decimal, the closed interval covered: [v, v] for a value, [low, high]
      for a Range, an open end at -1e300 / 1e300)
    - quantity: param, system, code, unit, lo, hi (as number)
    - reference: param, target_type, target_id, url
    - uri: param, uri
    - composite: param, c1_system, c1_code, c2_system, c2_code, c2_lo, c2_hi, and c3_lo, c3_hi
      for three components; a reference first component is (target type, id) or (None, url)
    - geo: param, lat, lon (WGS84 degrees, floats)
    - rows of an inline resource (Bundle ``composition``/``message``): its own rows, param
      ``<code>.<its param>``, and a token marker row ``<code>`` whose code is its type

    ``_id`` and ``_lastUpdated`` are columns of the resource table and produce no rows.
    """

    __slots__ = ("base_url", "resource_types")

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.resource_types = frozenset(get_facts().r4_resource_types)

    def __call__(self, resource_type: str, resource: dict[str, Any]) -> list[tuple[str, Row]]:
        root: list[Item] = [(resource_type, resource)]
        out: Out = []
        present = resource.keys()
        for plan in compile_type(resource_type).plans:
            needs = plan.expr.needs
            if needs is not None and present.isdisjoint(needs):
                continue  # none of the elements it reads is there
            start = len(out)
            plan.run(root, out, self)
            if len(out) - start > 1:
                # Rows of different parameters never collide: deduplicate each plan's rows alone,
                # which skips the (common) plans that gave one row or none.
                _dedupe(out, start)
        return out


def _dedupe(out: Out, start: int) -> None:
    # The values alone are the key: within one plan, rows of two kinds always differ in param.
    keys = [tuple(row.values()) for _, row in out[start:]]
    unique = set(keys)
    if len(unique) == len(keys):
        return
    kept: Out = []
    for item, key in zip(out[start:], keys, strict=True):
        if key in unique:
            unique.discard(key)
            kept.append(item)
    out[start:] = kept


_NO_INDEXER = Indexer("")
