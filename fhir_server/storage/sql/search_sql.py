"""The search planner: a SearchQuery becomes SQLAlchemy Core predicates over the resource table.

One planner for SQLite and PostgreSQL.  Every parameter test is ``pid IN (SELECT pid FROM idx_*
WHERE res_type = ? AND param = ? AND ...)``: both databases drive such a query from the index
lookup (a semi-join), so a patient-scoped search reads only that patient's rows.  Chains and
_has join through the reference index; sort keys are correlated MIN/MAX subqueries, and paging is
keyset-based on (sort keys..., pid) so pages stay stable while other data changes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, false, func, literal, not_, or_, select, true, tuple_, union_all
from sqlalchemy.sql.elements import ColumnElement

from fhir_server.errors import invalid
from fhir_server.search.code_case import CASE_INSENSITIVE_LIST, fold, is_case_insensitive
from fhir_server.search.query import (
    MAX_MS,
    MIN_MS,
    AllOf,
    AnyOf,
    Chain,
    CompositeValue,
    Condition,
    DateRange,
    Has,
    InCompartment,
    InCompartments,
    NearValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SortKey,
    TokenValue,
    TypeIn,
)
from fhir_server.storage.sql.geo import near_clause
from fhir_server.storage.sql.schema import INDEX_TABLES, idx_reference, resource

_TOP = "\U0010ffff"  # sorts after every other code point: the upper bound of a prefix range
# Condition kinds whose index table is not idx_<kind>.
_TABLE_OF_KIND = {"near": "geo"}
# Kinds that sort by one text column of their index table.
_TEXT_SORT = {"string": "value_norm", "token": "code", "uri": "uri", "reference": "target_id"}
# Token rows of these parameter suffixes hold identifier values, which never compare case-insensitively.
_IDENTIFIER_ROWS = (":identifier", ":of-type")


def own_param(param_col: Any) -> ColumnElement[bool]:
    """Rows of the resource's own parameters, not those of a resource held inside it (Bundle
    ``composition``), whose param is ``<code>.<param>`` (extract.py): ``_include=*`` follows only
    the former."""
    return not_(param_col.contains("."))


def _prefix(col: Any, value: str) -> ColumnElement[bool]:
    # A range instead of LIKE: both databases use a plain B-tree index for it.
    return and_(col >= value, col < value + _TOP)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def date_clause(col_lo: Any, col_hi: Any, v: DateRange, now: int) -> ColumnElement[bool]:
    """Match a target range [col_lo, col_hi) against a search range per R4 search.html#prefix."""
    p = v.prefix
    if p == "eq":
        return and_(col_lo >= v.lo, col_hi <= v.hi)
    if p == "ne":
        return or_(col_lo < v.lo, col_hi > v.hi)
    if p == "gt":
        return col_hi > v.hi
    if p == "sa":
        return col_lo >= v.hi
    if p == "lt":
        return col_lo < v.lo
    if p == "eb":
        return col_hi <= v.lo
    # ge / le as R4 words them: the range above (below) the search value overlaps the target, or
    # the search range fully contains the target.  A period that merely starts before a ge value
    # and ends inside its range does not match.
    if p == "ge":
        return or_(col_hi > v.hi, and_(col_lo >= v.lo, col_hi <= v.hi))
    if p == "le":
        return or_(col_lo < v.lo, and_(col_lo >= v.lo, col_hi <= v.hi))
    # ap: within 10% of the distance between the value and now (HAPI's rule), at least the value's range.
    gap = abs(now - v.lo) // 10
    return and_(col_hi > v.lo - gap, col_lo < v.hi + gap)


def number_clause(col_lo: Any, col_hi: Any, v: NumberValue) -> ColumnElement[bool]:
    """Match the target interval [col_lo, col_hi] against a search number (R4 search.html#number,
    #prefix).  A value v is stored as [v, v], a Range as [low, high] with an open end at -1e300 /
    1e300 (extract.py), so for a value every test below is the plain comparison of v.

    eq / ne take the search value's implicit precision (100 is [99.5, 100.5)) and need the whole
    target inside it.  The order prefixes compare with the exact search value, as R4 words them for
    numbers ("gt100: values that are greater than exactly 100"); a Range matches gt / ge when its
    upper end lies above (R4: "the range above the search value intersects the range of the target
    value"), lt / le when its lower end lies below, sa / eb when all of it does, ap when some of it
    is within 10% of the value."""
    p = v.prefix
    # "col_lo < ..." in eq and eb repeats what lo <= hi implies: it bounds the lookup index's range
    # on lo, which leads hi there (PostgreSQL scanned the whole table for eq without it).
    if p == "eq":
        return and_(col_lo >= v.lo, col_lo < v.hi, col_hi < v.hi)
    if p == "ne":
        return or_(col_lo < v.lo, col_hi >= v.hi)
    if p == "gt":
        return col_hi > v.value
    if p == "lt":
        return col_lo < v.value
    if p == "ge":
        return col_hi >= v.value
    if p == "le":
        return col_lo <= v.value
    if p == "sa":
        return col_lo > v.value
    if p == "eb":
        return and_(col_lo < v.value, col_hi < v.value)
    gap = abs(v.value) / 10
    return and_(col_hi >= v.value - gap, col_lo <= v.value + gap)


def _composite_reference(type_col: Any, id_col: Any, v: ReferenceValue) -> ColumnElement[bool]:
    """A reference as composite rows hold it (extract.py): (target type, id), or (NULL, url)."""
    if v.url is not None:
        return and_(type_col.is_(None), id_col == v.url)
    parts = [id_col == v.target_id]
    if v.target_type is not None:
        parts.append(type_col == v.target_type)
    return and_(*parts)


def token_clause(system_col: Any, code_col: Any, v: TokenValue, fold_codes: bool = True) -> ColumnElement[bool]:
    """A token row matches when its code is equal, or, in a case-insensitive code system (whose
    codes the index stores folded, code_case.py), equal after folding (R4 search.html#token).

    ``fold_codes=False`` for rows that hold identifier values (``:identifier``, ``:of-type``)."""
    parts: list[ColumnElement[bool]] = []
    if v.code is not None:
        folded = fold(v.code) if fold_codes else v.code
        if folded == v.code or not (v.any_system or is_case_insensitive(v.system)):
            parts.append(code_col == v.code)
        else:
            # An IN list on the code keeps the lookup an index seek on (res_type, param, code);
            # the system test then runs on the same (covering) index entries.
            parts.append(code_col.in_([v.code, folded]))
            if v.any_system:
                parts.append(or_(code_col == v.code, system_col.in_(CASE_INSENSITIVE_LIST)))
    if not v.any_system:
        parts.append(system_col.is_(None) if v.system is None else system_col == v.system)
    return and_(*parts) if parts else true()


class Planner:
    def __init__(self, now_ms: int, *, fence_probes: bool = False) -> None:
        self.now = now_ms
        # PostgreSQL flattens an EXISTS into a semi-join and then orders the joins by its own row
        # estimates, which are poor for rare (type, parameter, value) combinations: at 1M
        # resources Patient?family=adams&gender=male,female was driven from the 2,600 gender rows
        # (estimated: 1) and took 30 ms.  OFFSET 0 keeps a probe a per-candidate subplan, so the
        # condition chosen here drives, as it does on SQLite (4 ms).
        self.fence_probes = fence_probes

    # -- conditions ---------------------------------------------------------------------------
    @staticmethod
    def selectivity(cond: Any) -> int:
        """Rank conditions by how few rows they are likely to match (lower drives the query)."""
        if isinstance(cond, Condition):
            if cond.modifier in ("not", "missing"):
                return 9
            return {"id": 0, "reference": 1, "string": 3, "uri": 3, "composite": 3, "near": 3, "quantity": 4,
                    "number": 4, "token": 5, "date": 6, "lastUpdated": 7}.get(cond.kind, 8)
        if isinstance(cond, Chain | Has):
            return 2
        if isinstance(cond, InCompartment):
            return 1
        if isinstance(cond, AnyOf | AllOf):
            return min((Planner.selectivity(c) for c in cond.conditions), default=8)
        return 8

    @staticmethod
    def driver(conditions: Sequence[Any]) -> int:
        """The index of the condition that drives a conjunction: the most selective one."""
        return min(range(len(conditions)), key=lambda i: Planner.selectivity(conditions[i]))

    def predicate(self, cond: Any, r: Any, drive: bool = True) -> ColumnElement[bool]:
        """A boolean expression on the resource-table alias ``r``.

        The driving condition becomes ``pid IN (index lookup)``, which both databases evaluate
        once and join from.  The others (``drive=False``) become correlated EXISTS probes on the
        index table's (pid, param) index: measured at 1M resources, materialising
        ``category=laboratory`` (~500k pids) to intersect it with one patient's 1,400
        Observations took 127-470 ms; probing those 1,400 candidates does not."""
        if isinstance(cond, AnyOf):
            return or_(*[self.predicate(c, r, drive=drive) for c in cond.conditions])
        if isinstance(cond, AllOf):
            return self._all_of(cond, r, drive)
        if isinstance(cond, InCompartment):
            return self._compartment(cond, r)
        if isinstance(cond, InCompartments):
            return self._compartments(cond, r)
        if isinstance(cond, TypeIn):
            return r.c.res_type.in_(cond.types)
        if isinstance(cond, Chain):
            return self._chain(cond, r)
        if isinstance(cond, Has):
            return self._has(cond, r)
        assert isinstance(cond, Condition)
        if cond.kind == "id":
            if cond.modifier == "missing":
                return false() if cond.values[0] else true()
            test = r.c.res_id.in_([str(v) for v in cond.values])
            return not_(test) if cond.modifier == "not" else test
        if cond.kind == "lastUpdated":
            if cond.modifier == "missing":
                return false() if cond.values[0] else true()
            return or_(*[date_clause(r.c.lu_ms, r.c.lu_ms + 1, v, self.now) for v in cond.values])
        table, tests = self._index_tests(cond, alias=not drive)
        if drive:
            found: ColumnElement[bool] = r.c.pid.in_(select(table.c.pid).where(*tests))
        else:
            probe = select(table.c.pid).where(table.c.pid == r.c.pid, *tests)
            if self.fence_probes:
                probe = probe.offset(0)
            found = probe.exists()
        negate = cond.values[0] if cond.modifier == "missing" else cond.modifier == "not"
        return not_(found) if negate else found

    def _index_tests(self, cond: Condition, *, alias: bool) -> tuple[Any, list[ColumnElement[bool]]]:
        """The index table of ``cond`` and the tests its rows must pass."""
        name = _TABLE_OF_KIND.get(cond.kind, cond.kind)
        table: Any = INDEX_TABLES[name if name in INDEX_TABLES else "token"]
        if alias:
            table = table.alias()
        tests = [table.c.param == cond.code]
        if cond.resource_type:
            tests.insert(0, table.c.res_type == cond.resource_type)
        if cond.modifier == "missing":
            return table, tests
        values = list(cond.values)
        alternatives: list[ColumnElement[bool]] = []
        if cond.kind == "token" and cond.modifier is None and len(values) > 1:
            # gender=male,female as one code IN (...): an OR of equalities cannot bound an index
            # seek, so a probe of a pid's rows scanned every (type, parameter) row on PostgreSQL.
            plain = [v.code for v in values if v.any_system and v.code is not None and fold(v.code) == v.code]
            if len(plain) > 1:
                alternatives.append(table.c.code.in_(plain))
                values = [v for v in values if not (v.any_system and v.code in plain)]
        alternatives += [self._value(cond, table, v) for v in values]
        tests.append(or_(*alternatives))
        return table, tests

    def conditions(self, conditions: Sequence[Any], r: Any) -> list[ColumnElement[bool]]:
        """The predicates of a query's conditions on the resource-table alias ``r``.

        The most selective condition drives.  When it is an index condition, the other index
        conditions probe its index rows (by pid) inside the driving subquery, so a resource row is
        read only for a match, not for every candidate: a patient's 1,379 Observations probed for
        one code read 11k buffers on PostgreSQL at 1M resources, 5.5k this way.  Conditions that
        need the resource row (chains, _has, compartments, _id, _lastUpdated) probe outside."""
        if not conditions:
            return []
        driver = Planner.driver(conditions)
        lead = conditions[driver]
        if not _on_index(lead) or lead.modifier in ("missing", "not"):
            return [self.predicate(c, r, drive=i == driver) for i, c in enumerate(conditions)]
        table, tests = self._index_tests(lead, alias=False)
        others = [c for i, c in enumerate(conditions) if i != driver]
        tests += [self.predicate(c, table, drive=False) for c in others if _on_index(c)]
        return [r.c.pid.in_(select(table.c.pid).where(*tests)),
                *[self.predicate(c, r, drive=False) for c in others if not _on_index(c)]]

    def index_count(self, types: Sequence[str], conditions: Sequence[Any]) -> Any | None:
        """A count of the matches read from the lookup indexes alone, or None when the query is
        not made of index conditions on one type (with a positive one to drive).

        Index rows exist only for current, non-deleted resources (a delete removes them), so
        counting the driver's distinct pids, each probed for the other conditions, equals counting
        the resources; it spares a resource-table lookup per match, which dominated
        ``_summary=count`` over 100k+ matches (191 -> 50 ms at 1M on SQLite)."""
        if len(types) != 1 or not conditions:
            return None
        if not all(_on_index(c) and c.resource_type == types[0] for c in conditions):
            return None
        driver = Planner.driver(conditions)
        lead = conditions[driver]
        if lead.modifier in ("missing", "not"):
            return None
        table, tests = self._index_tests(lead, alias=False)
        tests += [self.predicate(c, table, drive=False) for i, c in enumerate(conditions) if i != driver]
        return select(func.count(table.c.pid.distinct())).where(*tests)

    def _value(self, cond: Condition, t: Any, v: Any) -> ColumnElement[bool]:
        kind, mod = cond.kind, cond.modifier
        c = t.c
        if kind == "string":
            if mod == "exact":
                return c.value_exact == v
            if mod == "contains":
                return c.value_norm.like(f"%{_like_escape(v)}%", escape="\\")
            return _prefix(c.value_norm, v)
        if kind == "token":
            if mod == "text":
                return _prefix(c.text_norm, v)
            return token_clause(c.system, c.code, v, fold_codes=not cond.code.endswith(_IDENTIFIER_ROWS))
        if kind == "date":
            return date_clause(c.lo_ms, c.hi_ms, v, self.now)
        if kind == "number":
            return number_clause(c.lo, c.hi, v)
        if kind == "quantity":
            assert isinstance(v, QuantityValue)
            parts = [number_clause(c.lo, c.hi, v.number)]
            if v.system is not None:
                parts.append(c.system == v.system)
                if v.code is not None:
                    parts.append(c.code == v.code)
            elif v.code is not None:
                parts.append(or_(c.code == v.code, c.unit == v.code))
            return and_(*parts)
        if kind == "reference":
            assert isinstance(v, ReferenceValue)
            if v.url is not None:
                return c.url == v.url
            parts = [c.target_id == v.target_id]
            if v.target_type is not None:
                parts.append(c.target_type == v.target_type)
            return and_(*parts)
        if kind == "uri":
            if mod == "below":
                return _prefix(c.uri, v)
            if mod == "above":
                return literal(v).like(c.uri + "%")
            return c.uri == v
        if kind == "composite":
            assert isinstance(v, CompositeValue)
            if isinstance(v.first, ReferenceValue):
                parts = [_composite_reference(c.c1_system, c.c1_code, v.first)]
            else:
                parts = [token_clause(c.c1_system, c.c1_code, v.first)]
            second = v.second
            if cond.second_kind == "token":
                parts.append(token_clause(c.c2_system, c.c2_code, second))
            elif cond.second_kind == "quantity":
                parts.append(number_clause(c.c2_lo, c.c2_hi, second.number))
                if second.system is not None:
                    parts.append(c.c2_system == second.system)
                if second.code is not None:
                    parts.append(c.c2_code == second.code)
            elif cond.second_kind == "number":
                parts.append(number_clause(c.c2_lo, c.c2_hi, second))
            elif cond.second_kind == "date":
                parts.append(date_clause(c.c2_lo, c.c2_hi, second, self.now))
            elif cond.second_kind == "string":
                parts.append(_prefix(c.c2_code, second))
            third = v.third
            if isinstance(third, NumberValue):
                parts.append(number_clause(c.c3_lo, c.c3_hi, third))
            elif isinstance(third, DateRange):
                parts.append(date_clause(c.c3_lo, c.c3_hi, third, self.now))
            return and_(*parts)
        if kind == "near":
            assert isinstance(v, NearValue)
            return near_clause(c.lat, c.lon, v)
        raise invalid(f"Search parameter '{cond.code}' of type {kind} is not supported")

    def _all_of(self, cond: AllOf, r: Any, drive: bool) -> ColumnElement[bool]:
        # As for the query's own conditions: only the most selective part drives, the others are
        # probes (a category lookup materialised beside a patient's compartment is the slow case).
        if not cond.conditions:
            return true()
        driver = Planner.driver(cond.conditions)
        return and_(*[self.predicate(c, r, drive=drive and i == driver) for i, c in enumerate(cond.conditions)])

    @staticmethod
    def _compartment(cond: InCompartment, r: Any) -> ColumnElement[bool]:
        # One union feeds the IN: an OR beside it would stop both databases from driving the
        # query from the reference index.
        ref = idx_reference.alias()
        members = select(ref.c.pid).where(
            ref.c.target_type == cond.owner_type, ref.c.target_id == cond.owner_id,
            tuple_(ref.c.res_type, ref.c.param).in_(list(cond.params)),
        )
        own = resource.alias()
        owner = select(own.c.pid).where(own.c.res_type == cond.owner_type, own.c.res_id == cond.owner_id)
        return r.c.pid.in_(union_all(members, owner))

    @staticmethod
    def _compartments(cond: InCompartments, r: Any) -> ColumnElement[bool]:
        ref = idx_reference.alias()
        tests = [ref.c.target_type == cond.owner_type, tuple_(ref.c.res_type, ref.c.param).in_(list(cond.params))]
        if cond.owner_ids is None:
            # Every owner: probing each candidate's own reference rows beats materialising the
            # references of a whole population on every page of an export.
            owner = and_(r.c.res_type == cond.owner_type)
            return or_(owner, exists().where(ref.c.pid == r.c.pid, *tests))
        tests.append(ref.c.target_id.in_(cond.owner_ids))
        own = resource.alias()
        owners = select(own.c.pid).where(own.c.res_type == cond.owner_type, own.c.res_id.in_(cond.owner_ids))
        return r.c.pid.in_(union_all(select(ref.c.pid).where(*tests), owners))

    def _chain(self, cond: Chain, r: Any) -> ColumnElement[bool]:
        ref = idx_reference.alias()
        target = resource.alias()
        sub = (
            select(ref.c.pid)
            .join(target, and_(target.c.res_type == ref.c.target_type, target.c.res_id == ref.c.target_id))
            .where(
                ref.c.res_type == cond.resource_type,
                ref.c.param == cond.code,
                ref.c.target_type.in_(cond.target_types),
                target.c.deleted.is_(False),
                self.predicate(cond.inner, target),
            )
        )
        return r.c.pid.in_(sub)

    def _has(self, cond: Has, r: Any) -> ColumnElement[bool]:
        ref = idx_reference.alias()
        source = resource.alias()
        sub = (
            select(ref.c.target_id)
            .join(source, source.c.pid == ref.c.pid)
            .where(
                ref.c.res_type == cond.source_type,
                ref.c.param == cond.code,
                ref.c.target_type == cond.resource_type,
                source.c.deleted.is_(False),
                self.predicate(cond.inner, source),
            )
        )
        return and_(r.c.res_type == cond.resource_type, r.c.res_id.in_(sub))

    # -- sorting and paging ------------------------------------------------------------------
    @staticmethod
    def sort_expr(key: SortKey, r: Any) -> Any:
        """The value a resource sorts by: the lowest for ascending, the highest for descending."""
        if key.kind == "id":
            return r.c.res_id
        if key.kind == "lastUpdated":
            return r.c.lu_ms
        agg = func.max if key.descending else func.min
        blank: Any
        if key.kind in _TEXT_SORT:
            t = INDEX_TABLES[key.kind]
            col, blank = t.c[_TEXT_SORT[key.kind]], ("" if key.descending else _TOP)
        elif key.kind == "date":
            t = INDEX_TABLES["date"]
            col = t.c.hi_ms if key.descending else t.c.lo_ms
            blank = MIN_MS if key.descending else MAX_MS
        else:  # number, quantity
            t = INDEX_TABLES[key.kind]
            col = t.c.hi if key.descending else t.c.lo
            blank = Decimal(MIN_MS) if key.descending else Decimal(MAX_MS)
        sub = select(agg(col)).where(t.c.pid == r.c.pid, t.c.param == key.code).scalar_subquery()
        # Resources without a value sort last in both directions.
        return func.coalesce(sub, blank)

    @staticmethod
    def after(exprs: list[tuple[Any, bool]], values: list[Any], forward: bool) -> ColumnElement[bool]:
        """Rows strictly after (forward) or before the cursor row in the sort order."""
        ors: list[ColumnElement[bool]] = []
        for i, (expr, desc) in enumerate(exprs):
            ahead = (expr < values[i]) if desc == forward else (expr > values[i])
            ors.append(and_(*[e == values[j] for j, (e, _) in enumerate(exprs[:i])], ahead))
        return or_(*ors)


def _on_index(cond: Any) -> bool:
    """A condition answered by an index table's rows alone (a pid's rows), not the resource row."""
    return isinstance(cond, Condition) and cond.kind not in ("id", "lastUpdated")


def encode_cursor(direction: str, values: list[Any]) -> str:
    raw = json.dumps([direction, [str(v) if isinstance(v, Decimal) else v for v in values]],
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: list[str]) -> tuple[str, list[Any]]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        direction, values = json.loads(raw)
        if direction not in ("f", "b") or not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError
        out: list[Any] = []
        for kind, v in zip(kinds, values, strict=True):
            if kind in ("number", "quantity"):
                out.append(Decimal(str(v)))
            elif kind in ("date", "lastUpdated", "pid"):
                out.append(int(v))
            else:
                if not isinstance(v, str):
                    raise ValueError
                out.append(v)
        return direction, out
    except (ValueError, TypeError, ArithmeticError):
        raise invalid(f"Invalid paging cursor '{cursor}'") from None
