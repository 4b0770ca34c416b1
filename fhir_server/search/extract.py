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
from fhir_server.search.fhirpath import Compiled, FhirPathError, Item, compile_expression
from fhir_server.search.normalize import (
    DATE_MAX_MS,
    DATE_MIN_MS,
    QUANTITY_CODE_MAX,
    STRING_EXACT_MAX,
    TOKEN_CODE_MAX,
    TOKEN_SYSTEM_MAX,
    URI_MAX,
    date_range,
    norm,
    number_range,
    parse_reference,
)
from fhir_server.search.registry import COLUMN_PARAMS, SearchParamDef, definitions

Row = dict[str, Any]
Out = list[tuple[str, Row]]
# (param code, JSON value, rows to append to, indexer) -> None
Maker = Callable[[str, Any, Out, "Indexer"], None]

ISO_4217 = "urn:iso:std:iso:4217"
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
    param: str, system: Any, code: Any, unit: Any, lo: Decimal | None, hi: Decimal | None, out: Out
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


def _t_coding(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is dict:
        _token_row(param, v.get("system"), v.get("code"), v.get("display"), out)


def _t_concept(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is not dict:
        return
    codings = v.get("coding")
    if type(codings) is list:
        for c in codings:
            if type(c) is dict:
                _token_row(param, c.get("system"), c.get("code"), c.get("display"), out)
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


def _n_primitive(param: str, v: Any, out: Out, ix: Indexer) -> None:
    r = number_range(v)
    if r is not None:
        out.append(("number", {"param": param, "lo": r[0], "hi": r[1]}))


def _range_bounds(v: Any) -> tuple[Decimal | None, Decimal | None, dict[str, Any]] | None:
    """A Range's [lo of low, hi of high) and the quantity that names its unit; open ends are None."""
    if type(v) is not dict:
        return None
    low, high = v.get("low"), v.get("high")
    low = low if type(low) is dict else {}
    high = high if type(high) is dict else {}
    lo_r = number_range(low.get("value"))
    hi_r = number_range(high.get("value"))
    if lo_r is None and hi_r is None:
        return None
    return (lo_r[0] if lo_r else None), (hi_r[1] if hi_r else None), (low if lo_r else high)


def _n_range(param: str, v: Any, out: Out, ix: Indexer) -> None:
    b = _range_bounds(v)
    if b is not None:
        out.append(("number", {"param": param, "lo": b[0], "hi": b[1]}))


def _q_quantity(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is dict:
        r = number_range(v.get("value"))
        if r is not None:
            _quantity_row(param, v.get("system"), v.get("code"), v.get("unit"), r[0], r[1], out)


def _q_money(param: str, v: Any, out: Out, ix: Indexer) -> None:
    if type(v) is dict:
        r = number_range(v.get("value"))
        if r is not None:
            _quantity_row(param, ISO_4217, v.get("currency"), None, r[0], r[1], out)


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
        found = [_pair(c.get("system"), c.get("code")) for c in codings if type(c) is dict]
    elif t == "Coding":
        found = [_pair(v.get("system"), v.get("code"))] if type(v) is dict else []
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
    code: str
    expr: Compiled
    c1: Compiled
    c2: Compiled
    c2_values: Callable[[str, Any], list[C2]]

    def run(self, root: list[Item], out: Out, ix: Indexer) -> None:
        for item in self.expr.fn(root):
            # The value half is absent more often (code-value-date on a Quantity observation).
            seconds = [x for t, v in self.c2.fn([item]) for x in self.c2_values(t, v)]
            if not seconds:
                continue
            firsts = [p for t, v in self.c1.fn([item]) for p in _c1_pairs(t, v)]
            for s1, k1 in firsts:
                for s2, k2, lo, hi in seconds:
                    out.append(("composite", {
                        "param": self.code, "c1_system": s1, "c1_code": k1,
                        "c2_system": s2, "c2_code": k2, "c2_lo": lo, "c2_hi": hi,
                    }))


@dataclass(frozen=True, slots=True)
class TypePlan:
    plans: tuple[_Plan | _CompositePlan, ...]
    # code -> why it can't be indexed; column parameters (_id, _lastUpdated) are supported but
    # have no plan.
    unsupported: dict[str, str] = field(default_factory=dict)


def _compile(resource_type: str, p: SearchParamDef) -> _Plan | _CompositePlan:
    """Raise ValueError (with the reason) when the parameter can't be indexed faithfully."""
    if not p.expression:
        raise ValueError("no FHIRPath expression")
    try:
        expr = compile_expression(p.expression, resource_type)
    except FhirPathError as exc:
        raise ValueError(f"FHIRPath: {exc}") from None
    if p.type == "composite":
        return _compile_composite(p, expr)
    table = MAKERS.get(p.type)
    if table is None:
        raise ValueError(f"type {p.type} is not indexed")
    makers = {t: table[t] for t in expr.types if t in table}
    if not makers:
        raise ValueError(f"yields {', '.join(sorted(expr.types))}, which a {p.type} parameter can't index")
    return _Plan(p.code, expr, makers)


def _compile_composite(p: SearchParamDef, expr: Compiled) -> _CompositePlan:
    comps = p.components
    if len(comps) != 2:
        raise ValueError(f"{len(comps)} components (the composite row holds 2)")
    if comps[0].type != "token":
        raise ValueError(f"first component {comps[0].code or comps[0].definition_url} is a "
                         f"{comps[0].type or 'unknown'} parameter (the row holds a token)")
    second = _C2.get(comps[1].type)
    if second is None:
        raise ValueError(f"second component {comps[1].code} is a {comps[1].type or 'unknown'} parameter")
    try:
        c1 = compile_expression(comps[0].expression, expr.types)
        c2 = compile_expression(comps[1].expression, expr.types)
    except FhirPathError as exc:
        raise ValueError(f"FHIRPath in a component: {exc}") from None
    if not c1.types & _TOKEN.keys():
        raise ValueError(f"first component yields {', '.join(sorted(c1.types))}")
    if not c2.types & second[1].keys():
        raise ValueError(f"second component yields {', '.join(sorted(c2.types))}")
    return _CompositePlan(p.code, expr, c1, c2, second[0])


@cache
def compile_type(resource_type: str) -> TypePlan:
    """The index plans of one resource type, compiled once per process."""
    params = definitions().get(resource_type, {})
    plans: list[_Plan | _CompositePlan] = []
    unsupported: dict[str, str] = {}
    for code, p in params.items():
        if p.type == "special":
            unsupported[code] = "special parameter (its matching is not an index look-up)"
            continue
        try:
            plan = _compile(resource_type, p)
        except ValueError as exc:
            unsupported[code] = str(exc)
            continue
        if code not in COLUMN_PARAMS:
            plans.append(plan)
    return TypePlan(tuple(plans), unsupported)


class Indexer:
    """Index rows of a resource, as ``(kind, row)`` pairs; kinds are the idx_<kind> tables plus
    "composite".  Rows carry every column but pid and res_type:

    - string: param, value_norm (``norm``), value_exact (original text, at most 1024 chars)
    - token: param, system, code, text_norm; also ``<code>:of-type`` rows (code = "type|value") for
      typed identifiers and ``<code>:identifier`` rows for Reference.identifier
    - date: param, lo_ms, hi_ms (half-open epoch ms; open Period ends are -2**62 / 2**62)
    - number: param, lo, hi (Decimal; a Range's open end is None)
    - quantity: param, system, code, unit, lo, hi (Decimal; a Range's open end is None)
    - reference: param, target_type, target_id, url
    - uri: param, uri
    - composite: param, c1_system, c1_code, c2_system, c2_code, c2_lo, c2_hi

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
