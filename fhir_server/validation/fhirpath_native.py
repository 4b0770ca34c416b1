"""The fast path for invariants: FHIRPath compiled once into Python source, one function each.

fhirpathpy (``fhirpath_reference``) costs 15-60 us per evaluation; a closure per operator still
costs a call per node.  Here each expression becomes one generated Python function of straight-line
statements and inline loops over the JSON (about 0.5-2 us per invariant), which is what lets
profile validation stay within the cost of structural validation.  The parse tree is fhirpathpy's
own.  Navigation is typed statically from the R4 structure facts (``value`` reads every
``valueX`` member, ``value.ofType(Quantity)`` reads ``valueQuantity``), and anything outside the
supported subset raises ``Unsupported`` at compile time, so the caller falls back to the reference
engine.  The tests hold this compiler to fhirpathpy's verdicts on every context of the test corpus.

Supported: member navigation (a name the type lacks selects nothing), ``$this``, ``%resource``,
``%rootResource``, ``%ucum``, literals (string, integer, decimal, boolean, ``{}``), ``and or xor
implies``, ``= != < > <= >=``, ``in contains | + - * / div mod &``, unary minus, indexers, ``is``/``as``
and the functions exists, empty, not, count, hasValue, where, all, select, exists(criteria), repeat,
first, last, tail, single, distinct, isDistinct, allTrue, anyTrue, allFalse, anyFalse, ofType, as,
is, iif, matches, startsWith, endsWith, contains, length, toString, toInteger, substring, lower,
upper, memberOf, trace, resolve (contained resources only), children, descendants, intersect,
union, combine, exclude.

The functions the generated code calls live in ``fhirpath_runtime``.

Semantics kept from the specification: empty propagation, three-valued logic, singleton evaluation
of collections (a single non-boolean item is true; several items are taken as true too, where
fhirpathpy and the Java engine raise), date/time comparison by precision and time zone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhirpathpy.parser import parse

from fhir_server.model.facts import Facts
from fhir_server.validation.fhirpath_reference import MemberOf, member_of_items
from fhir_server.validation.fhirpath_runtime import (
    _E,
    _F,
    _INEQ_OPS,
    _T,
    NO_VALUE,
    RUNTIME,
    Coll,
    Unsupported,
)

Evaluator = Callable[[Any, Any], Coll]  # (context value, root resource) -> result collection

__all__ = ["NO_VALUE", "Evaluator", "NativeCompiler", "Unsupported"]

_DATE_TYPES = frozenset(("date", "dateTime", "instant", "System.Date", "System.DateTime"))
_NUMBER_TYPES = frozenset(
    ("integer", "decimal", "positiveInt", "unsignedInt", "System.Integer", "System.Decimal")
)
_STRING_TYPES = frozenset(
    (
        "string",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "markdown",
        "base64Binary",
        "System.String",
    )
)
_SYSTEM = {"String": "System.String", "Boolean": "System.Boolean", "Integer": "System.Integer",
           "Decimal": "System.Decimal", "Date": "System.Date", "DateTime": "System.DateTime",
           "Time": "System.Time"}  # fmt: skip
_UCUM = "http://unitsofmeasure.org"
_NOTHING = "System.Nothing"  # the type of a navigation that can select nothing


# ------------------------------------------------------------------------------------------------
# The compiler

_TRUTH = "(None if not {0} else ({0}[0] if len({0}) == 1 and type({0}[0]) is bool else True))"


@dataclass(slots=True)
class _V:
    """A value the generated code has computed: its variable and static item type."""

    var: str
    type: str | None  # None when unknown or mixed
    # for a choice member before ofType(): (the variable it was read from, {type code: JSON name})
    choice: tuple[str, dict[str, str]] | None = None
    # "coll": a collection; "tfe": one of the shared _T/_F/_E; "bool": a Python True/False/None
    # (a boolean result kept out of a list until a collection is needed)
    kind: str = "coll"
    # a "bool" that is never None (exists(), empty(), hasValue() and what is built of them only):
    # the connectives need no three-valued logic for it
    definite: bool = False


def _truth_of(v: _V) -> str:
    if v.kind == "bool":
        return v.var
    if v.kind == "tfe":
        return f"(True if {v.var} is _T else (False if {v.var} is _F else None))"
    return _TRUTH.format(v.var)


class _Source:
    """The text of one generated function."""

    def __init__(self, ns: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.n = 0
        self.ns = ns
        # collection variable -> the variable of its one item, where the collection is known to be
        # exactly [item] (the context, the item of a where()): navigation then needs no loop
        self.items: dict[str, str] = {}

    def tmp(self, prefix: str = "t") -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def emit(self, ind: int, text: str) -> None:
        self.lines.append("    " * ind + text)

    def const(self, value: Any) -> str:
        name = f"k{len(self.ns)}"
        self.ns[name] = value
        return name


class NativeCompiler:
    def __init__(self, facts: Facts, member_of: MemberOf, peepholes: bool = True) -> None:
        # Shorter code for common shapes (name.hasValue(), name.exists(), start <= end, connectives
        # of two-valued booleans); False compiles everything the general way (the tests compare)
        self.peepholes = peepholes
        # (source, constants) -> the function compiled from them
        self._functions: dict[tuple[str, tuple[tuple[str, Any], ...]], Callable[..., Any]] = {}
        self.facts = facts
        self.member_of = member_of
        self._resource_types = frozenset(facts.r4_resource_types)
        self._root_type: str | None = None

    def compile(self, expression: str, context_type: str | None, root_type: str | None) -> Evaluator:
        """An evaluator of ``expression`` on a value of ``context_type`` (a FHIR type name, a
        backbone path such as "Observation.component", or None when unknown)."""
        try:
            tree = parse(expression)
        except Exception as exc:  # antlr raises its own types
            raise Unsupported(f"cannot parse: {exc}") from None
        self._root_type = root_type
        fn: Evaluator = self._function_of(tree["children"][0], context_type, f"<fhirpath {expression[:60]}>")
        return fn

    def compile_predicate(self, expression: str, context_type: str | None,
                          root_type: str | None) -> Callable[[Any, Any], bool]:  # fmt: skip
        """As ``compile``, as one function answering "is the result ``true``?" (an invariant holds)."""
        try:
            tree = parse(expression)
        except Exception as exc:
            raise Unsupported(f"cannot parse: {exc}") from None
        self._root_type = root_type
        fn: Callable[[Any, Any], bool] = self._function_of(
            tree["children"][0], context_type, f"<fhirpath {expression[:60]}>", predicate=True
        )
        return fn

    def _function_of(self, node: dict[str, Any], context_type: str | None, label: str,
                     predicate: bool = False) -> Callable[..., Any]:  # fmt: skip
        member_of = self.member_of

        def member_of_fn(items: Coll, url: Coll) -> Coll:
            if len(url) != 1 or not isinstance(url[0], str):
                return _E
            r = member_of_items(member_of, items, url[0])
            return _E if not r else (_T if r[0] else _F)

        ns = dict(RUNTIME)
        ns["_member_of"] = member_of_fn
        src = _Source(ns)
        src.items["focus"] = "value"
        result = self._x(src, node, context_type, context_type, "focus", "focus", 1)
        if predicate:
            tail = f"\n    return {_truth_of(result)} is True\n"
        else:
            result = self._coll(src, result, 1)
            tail = f"\n    return {result.var}\n"
        body = "\n".join(src.lines) + tail
        # the context as a collection, built only when the code reads it as one
        head = "def _generated(value, root):\n" + ("    focus = [value]\n" if _reads(body, "focus") else "")
        # One function for the same code with the same constants: dom-6 on every resource type,
        # an invariant in several profiles (fewer functions for the CPU caches to hold)
        key = (head + body, tuple((k, ("fn", id(v)) if callable(v) else repr(v)) for k, v in ns.items()
                                  if k not in RUNTIME and k != "_member_of"))  # fmt: skip
        found = self._functions.get(key)
        if found is not None:
            return found
        exec(compile(head + body, label, "exec"), ns)
        fn: Callable[..., Any] = ns["_generated"]
        self._functions[key] = fn
        return fn

    def _coll(self, g: _Source, v: _V, ind: int) -> _V:
        if v.kind != "bool":
            return v
        t = g.tmp()
        if v.definite:
            g.emit(ind, f"{t} = _T if {v.var} else _F")
        else:
            g.emit(ind, f"{t} = _E if {v.var} is None else (_T if {v.var} else _F)")
        return _V(t, v.type, None, "tfe")

    def _c(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str, this: str,
           ind: int) -> _V:  # fmt: skip
        """A sub-expression as a collection."""
        return self._coll(g, self._x(g, n, ft, tt, focus, this, ind), ind)

    # -- dispatch ----------------------------------------------------------------------------

    def _x(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str, this: str,
           ind: int) -> _V:  # fmt: skip
        method = getattr(self, "_n_" + n["type"], None)
        if method is None:
            raise Unsupported(f"{n['type']} is not supported")
        result: _V = method(g, n, ft, tt, focus, this, ind)
        return result

    def _n_TermExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                          this: str, ind: int) -> _V:  # fmt: skip
        return self._x(g, n["children"][0], ft, tt, focus, this, ind)

    _n_ParenthesizedTerm = _n_TermExpression

    def _n_InvocationTerm(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                          this: str, ind: int) -> _V:  # fmt: skip
        inner = n["children"][0]
        kind = inner["type"]
        if kind == "MemberInvocation":
            name = _identifier(inner)
            if ft is not None and name == ft and ft in self._resource_types:
                return _V(focus, ft)  # "Patient.name": the type names the context
            return self._member(g, _V(focus, ft), name, ind)
        if kind == "FunctionInvocation":
            return self._function(g, _V(focus, ft), inner, tt, this, ind)
        if kind == "ThisInvocation":
            return _V(this, tt)
        raise Unsupported(f"{kind} is not supported")

    def _n_InvocationExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                                this: str, ind: int) -> _V:  # fmt: skip
        right = n["children"][1]
        called = _function_name(right) if self.peepholes else None
        if called == "hasValue":
            found = self._has_value(g, n["children"][0], ft, focus, ind)
            if found is not None:
                return found
        if called in ("exists", "empty"):
            found = self._exists(g, n["children"][0], ft, focus, called == "empty", ind)
            if found is not None:
                return found
        # not() reads a boolean as it is: no collection to build and take apart again
        left = (self._x if called == "not" else self._c)(g, n["children"][0], ft, tt, focus, this, ind)
        if right["type"] == "MemberInvocation":
            return self._member(g, left, _identifier(right), ind)
        if right["type"] == "FunctionInvocation":
            return self._function(g, left, right, tt, this, ind)
        raise Unsupported(f"{right['type']} is not supported")

    def _has_value(self, g: _Source, n: dict[str, Any], ft: str | None, focus: str, ind: int) -> _V | None:
        """``name.hasValue()`` on the one context item, for a primitive member: one read of the
        member instead of a collection built and examined (None: not that shape)."""
        found = self._primitive_member(g, n, ft, focus)
        if found is None:
            return None
        name, item = found[0], g.items[focus]
        # as _nav then hasValue(): exactly one item, present (not only "_name"), not an object
        v, x, t = g.tmp("v"), g.tmp("x"), g.tmp()
        g.emit(ind, f"{v} = {item}.get({name!r}) if type({item}) is dict else None")
        g.emit(ind, f"{x} = {v}[0] if type({v}) is list and len({v}) == 1 else {v}")
        g.emit(ind, f"{t} = {x} is not None and type({x}) is not dict and type({x}) is not list")
        return _V(t, "System.Boolean", None, "bool", True)

    def _n_ExternalConstantTerm(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                                this: str, ind: int) -> _V:  # fmt: skip
        name = _identifier(n["children"][0]).strip("`")
        if name in ("resource", "rootResource"):
            t = g.tmp()
            g.emit(ind, f"{t} = [root]")
            return _V(t, self._root_type)
        if name == "ucum":
            return _V(g.const([_UCUM]), "System.String")
        raise Unsupported(f"%{name} is not supported")

    def _n_LiteralTerm(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str, this: str,
                       ind: int) -> _V:  # fmt: skip
        lit = n["children"][0]
        text = lit.get("text", "")
        kind = lit["type"]
        value: Any
        if kind == "StringLiteral":
            value, t = _unescape(text[1:-1]), "System.String"
        elif kind == "BooleanLiteral":
            value, t = text == "true", "System.Boolean"
        elif kind == "NumberLiteral":
            value, t = (Decimal(text), "System.Decimal") if "." in text else (int(text), "System.Integer")
        elif kind == "NullLiteral":
            return _V("_E", None)
        else:
            raise Unsupported(f"{kind} is not supported")
        return _V(g.const([value]), t)

    # -- operators ---------------------------------------------------------------------------

    def _pair(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str, this: str,
              ind: int) -> tuple[_V, _V]:  # fmt: skip
        a = self._c(g, n["children"][0], ft, tt, focus, this, ind)
        b = self._c(g, n["children"][1], ft, tt, focus, this, ind)
        return a, b

    def _n_AndExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str, this: str,
                         ind: int) -> _V:  # fmt: skip
        a = self._x(g, n["children"][0], ft, tt, focus, this, ind)
        return self._short_circuit(g, n, ft, tt, focus, this, ind, a, decides=False)

    def _n_OrExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str, this: str,
                        ind: int) -> _V:  # fmt: skip
        if n["terminalNodeText"][0] == "xor":
            t, ta, tb = g.tmp(), g.tmp("b"), g.tmp("b")
            a = self._x(g, n["children"][0], ft, tt, focus, this, ind)
            b = self._x(g, n["children"][1], ft, tt, focus, this, ind)
            g.emit(ind, f"{ta} = {_truth_of(a)}")
            g.emit(ind, f"{tb} = {_truth_of(b)}")
            g.emit(ind, f"{t} = None if {ta} is None or {tb} is None else {ta} != {tb}")
            return _V(t, "System.Boolean", None, "bool")
        a = self._x(g, n["children"][0], ft, tt, focus, this, ind)
        return self._short_circuit(g, n, ft, tt, focus, this, ind, a, decides=True)

    def _short_circuit(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str, this: str,
                       ind: int, a: _V, decides: bool) -> _V:  # fmt: skip
        """``a and b`` (``decides`` False: a false left side decides) or ``a or b`` (True): the
        right side is evaluated only when the left one does not decide, three-valued otherwise."""
        other = not decides
        t, ta, tb = g.tmp(), g.tmp("b"), g.tmp("b")
        if a.definite:  # a two-valued left side: its truth is the variable itself
            g.emit(ind, f"if {'' if decides else 'not '}{a.var}:")
            g.emit(ind + 1, f"{t} = {decides}")
            g.emit(ind, "else:")
            b = self._x(g, n["children"][1], ft, tt, focus, this, ind + 1)
            if b.definite:
                g.emit(ind + 1, f"{t} = {b.var}")
                return _V(t, "System.Boolean", None, "bool", True)
            g.emit(ind + 1, f"{tb} = {_truth_of(b)}")
            g.emit(ind + 1, f"{t} = {decides} if {tb} is {decides} else ({other} if {tb} is {other} else None)")
            return _V(t, "System.Boolean", None, "bool")
        g.emit(ind, f"{ta} = {_truth_of(a)}")
        g.emit(ind, f"if {ta} is {decides}:")
        g.emit(ind + 1, f"{t} = {decides}")
        g.emit(ind, "else:")
        b = self._x(g, n["children"][1], ft, tt, focus, this, ind + 1)
        g.emit(ind + 1, f"{tb} = {_truth_of(b)}")
        g.emit(ind + 1, f"{t} = {decides} if {tb} is {decides} else "
                        f"({other} if {ta} is {other} and {tb} is {other} else None)")
        return _V(t, "System.Boolean", None, "bool")

    def _n_ImpliesExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                             this: str, ind: int) -> _V:  # fmt: skip
        a = self._x(g, n["children"][0], ft, tt, focus, this, ind)
        t, ta, tb = g.tmp(), g.tmp("b"), g.tmp("b")
        g.emit(ind, f"{ta} = {_truth_of(a)}")
        g.emit(ind, f"if {ta} is False:")
        g.emit(ind + 1, f"{t} = True")
        g.emit(ind, "else:")
        b = self._x(g, n["children"][1], ft, tt, focus, this, ind + 1)
        g.emit(ind + 1, f"{tb} = {_truth_of(b)}")
        g.emit(ind + 1, f"{t} = (True if {tb} is True else None) if {ta} is None else {tb}")
        return _V(t, "System.Boolean", None, "bool")

    def _n_EqualityExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                              this: str, ind: int) -> _V:  # fmt: skip
        op = n["terminalNodeText"][0]
        if op not in ("=", "!="):
            raise Unsupported(f"operator {op} is not supported")
        a, b = self._pair(g, n, ft, tt, focus, this, ind)
        dates = a.type in _DATE_TYPES or b.type in _DATE_TYPES
        t = g.tmp()
        negate = op == "!="
        literal = g.ns.get(b.var) if b.var in g.ns else None
        if (not dates and type(literal) is list and len(literal) == 1 and type(literal[0]) is str
                and a.type in _STRING_TYPES):  # fmt: skip
            # "status = 'final'": a string against a string literal, compared inline
            a0, hit, miss = a.var, ("_F" if negate else "_T"), ("_T" if negate else "_F")
            g.emit(ind, f"{t} = _E if not {a0} else (({hit} if {a0}[0] == {b.var}[0] else {miss}) if len({a0}) == 1 "
                        f"and type({a0}[0]) is str else _eq({a0}, {b.var}, False, {negate}))")  # fmt: skip
            return _V(t, "System.Boolean", None, "tfe")
        g.emit(ind, f"{t} = _eq({a.var}, {b.var}, {dates}, {negate})")
        return _V(t, "System.Boolean", None, "tfe")

    def _n_InequalityExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                                this: str, ind: int) -> _V:  # fmt: skip
        pa = self._primitive_member(g, n["children"][0], ft, focus) if self.peepholes else None
        pb = self._primitive_member(g, n["children"][1], ft, focus) if self.peepholes else None
        if pa is not None and pb is not None and pa[1] in _DATE_TYPES and pb[1] in _DATE_TYPES:
            # "start <= end" on the one context item: two dates written alike compare as text,
            # before any collection is built; anything else takes the general way below
            item, op = g.items[focus], n["terminalNodeText"][0]
            t, x, y = g.tmp(), g.tmp("x"), g.tmp("y")
            g.emit(ind, f"{x} = {item}.get({pa[0]!r}) if type({item}) is dict else None")
            g.emit(ind, f"{y} = {item}.get({pb[0]!r}) if type({item}) is dict else None")
            g.emit(ind, f"if type({x}) is str and type({y}) is str and len({x}) == len({y}) and "
                        f"(len({x}) <= 10 or {x}[19:] == {y}[19:]):")  # fmt: skip
            g.emit(ind + 1, f"{t} = _T if {x} {op} {y} else _F")
            g.emit(ind, "else:")
            r = self._inequality(g, n, ft, tt, focus, this, ind + 1)
            g.emit(ind + 1, f"{t} = {r.var}")
            return _V(t, "System.Boolean", None, "tfe")
        return self._inequality(g, n, ft, tt, focus, this, ind)

    def _exists(self, g: _Source, n: dict[str, Any], ft: str | None, focus: str, negate: bool,
                ind: int) -> _V | None:  # fmt: skip
        """``a.b.c.exists()`` / ``.empty()``, member names from the one context item (the last may
        be a choice): is there a value, found by loops that stop at the first, without the
        collections (None: not that shape)."""
        item = g.items.get(focus)
        names = _member_chain(n)
        if item is None or ft is None or names is None:
            return None
        if names[0] == ft and ft in self._resource_types:
            return None  # "Patient.exists()": the context itself
        els = []
        type_name = ft
        for i, name in enumerate(names):
            td = self.facts.types.get(type_name)
            el = next((e for e in td.elements if e.name == name), None) if td is not None else None
            if el is None:
                return None
            els.append(el)
            if i < len(names) - 1:  # navigated through: one complex type
                if el.choice or not el.types or self.facts.is_primitive(el.types[0]):
                    return None
                type_name = el.types[0]
        t = g.tmp()
        if len(names) == 1:
            g.emit(ind, f"{t} = type({item}) is dict and {self._has_item(g, item, names[0], els[0])}")
        else:
            # as _nav builds the collections: nulls inside an array are left out one step on
            g.emit(ind, f"{t} = False")
            parent, level = item, ind
            for name in names[:-1]:
                got, each = g.tmp("v"), g.tmp("i")
                guard = "" if parent != item else f" if type({parent}) is dict else None"  # below: dicts
                g.emit(level, f"{got} = {parent}.get({name!r}){guard}")
                g.emit(level, f"if {got} is not None:")
                g.emit(level + 1, f"for {each} in ({got} if type({got}) is list else ({got},)):")
                g.emit(level + 2, f"if type({each}) is dict:")
                parent, level = each, level + 3
            g.emit(level, f"if {self._has_item(g, parent, names[-1], els[-1])}:")
            g.emit(level + 1, f"{t} = True")
            g.emit(level + 1, "break")
            for depth in range(len(names) - 2, 0, -1):  # out of the loops around, once found
                g.emit(ind + 3 * depth - 1, f"if {t}:")
                g.emit(ind + 3 * depth, "break")
        if negate:
            g.emit(ind, f"{t} = not {t}")
        return _V(t, "System.Boolean", None, "bool", True)

    def _has_item(self, g: _Source, parent: str, name: str, el: Any) -> str:
        """Whether navigating ``name`` from the object ``parent`` gives an item, as _nav builds it:
        a value that is not null and not [] does; a primitive without one does when its "_name"
        does (the choice types' navigation ignores those)."""
        v, w = g.tmp("v"), g.tmp("w")
        keys = [name + tc[0].upper() + tc[1:] for tc in el.types] if el.choice else [name]
        terms = [
            f"(({v} := {parent}.get({k!r})) is not None and (type({v}) is not list or {v} != []))"
            for k in keys
        ]
        if not el.choice and el.types and self.facts.is_primitive(el.types[0]):
            terms.append(f"({v} is None and {'_' + name!r} in {parent} and "
                         f"(type({w} := {parent}[{'_' + name!r}]) is not list or {w} != []))")  # fmt: skip
        return "(" + " or ".join(terms) + ")"

    def _primitive_member(
        self, g: _Source, n: dict[str, Any], ft: str | None, focus: str
    ) -> tuple[str, str] | None:
        """(name, type) when ``n`` is a plain member of a primitive type read from the one context
        item, else None."""
        if g.items.get(focus) is None or ft is None or n["type"] != "TermExpression":
            return None
        term = n["children"][0]
        if term["type"] != "InvocationTerm" or term["children"][0]["type"] != "MemberInvocation":
            return None
        name = _identifier(term["children"][0]).strip("`")
        td = self.facts.types.get(ft)
        el = next((e for e in td.elements if e.name == name), None) if td is not None else None
        if el is None or el.choice or not el.types or not self.facts.is_primitive(el.types[0]):
            return None
        return name, el.types[0]

    def _inequality(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                    this: str, ind: int) -> _V:  # fmt: skip
        a, b = self._pair(g, n, ft, tt, focus, this, ind)
        types = {a.type, b.type}
        if all(x is not None and (x == "Quantity" or "Quantity" in self._ancestors(x)) for x in types):
            kind = "q"
        elif None in types or not types <= (_DATE_TYPES | _NUMBER_TYPES | _STRING_TYPES):
            raise Unsupported(f"comparison of {a.type} and {b.type}")
        else:
            kind = "d" if types & _DATE_TYPES else "v"
        t = g.tmp()
        op = n["terminalNodeText"][0]
        call = f"_ineq({a.var}, {b.var}, {_INEQ_OPS[op]}, {kind!r})"
        if kind == "d":
            # two dates written alike (same length, same zone): their text order is their time order
            x, y = g.tmp("x"), g.tmp("y")
            g.emit(ind, f"if len({a.var}) == 1 and len({b.var}) == 1:")
            g.emit(ind + 1, f"{x} = {a.var}[0]")
            g.emit(ind + 1, f"{y} = {b.var}[0]")
            g.emit(ind + 1, f"if type({x}) is str and type({y}) is str and len({x}) == len({y}) and "
                            f"(len({x}) <= 10 or {x}[19:] == {y}[19:]):")  # fmt: skip
            g.emit(ind + 2, f"{t} = _T if {x} {op} {y} else _F")
            g.emit(ind + 1, "else:")
            g.emit(ind + 2, f"{t} = {call}")
            g.emit(ind, "else:")
            g.emit(ind + 1, f"{t} = _E")
            return _V(t, "System.Boolean", None, "tfe")
        g.emit(ind, f"{t} = {call}")
        return _V(t, "System.Boolean", None, "tfe")

    def _n_MembershipExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                                this: str, ind: int) -> _V:  # fmt: skip
        a, b = self._pair(g, n, ft, tt, focus, this, ind)
        if a.type in _DATE_TYPES or b.type in _DATE_TYPES:
            raise Unsupported("membership of dates")
        if n["terminalNodeText"][0] == "contains":
            a, b = b, a
        t = g.tmp()
        g.emit(ind, f"{t} = _in({a.var}, {b.var})")
        return _V(t, "System.Boolean", None, "tfe")

    def _n_UnionExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                           this: str, ind: int) -> _V:  # fmt: skip
        a, b = self._pair(g, n, ft, tt, focus, this, ind)
        t = g.tmp()
        g.emit(ind, f"{t} = _distinct({a.var} + {b.var})")
        return _V(t, a.type if a.type == b.type else None)

    def _n_AdditiveExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                              this: str, ind: int) -> _V:  # fmt: skip
        a, b = self._pair(g, n, ft, tt, focus, this, ind)
        if a.type in _DATE_TYPES or b.type in _DATE_TYPES:
            raise Unsupported("date arithmetic")
        t = g.tmp()
        g.emit(ind, f"{t} = _add({a.var}, {b.var}, {n['terminalNodeText'][0]!r})")
        return _V(t, a.type if a.type == b.type else None)

    def _n_MultiplicativeExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None,
                                    focus: str, this: str, ind: int) -> _V:  # fmt: skip
        a, b = self._pair(g, n, ft, tt, focus, this, ind)
        op = n["terminalNodeText"][0]
        t = g.tmp()
        g.emit(ind, f"{t} = _mul({a.var}, {b.var}, {op!r})")
        return _V(t, a.type if a.type == b.type and op != "/" else None)

    def _n_PolarityExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                              this: str, ind: int) -> _V:  # fmt: skip
        a = self._c(g, n["children"][0], ft, tt, focus, this, ind)
        if n["terminalNodeText"][0] != "-":
            return a
        t = g.tmp()
        g.emit(ind, f"{t} = _neg({a.var})")
        return _V(t, a.type)

    def _n_IndexerExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                             this: str, ind: int) -> _V:  # fmt: skip
        a, b = self._pair(g, n, ft, tt, focus, this, ind)
        t = g.tmp()
        g.emit(ind, f"{t} = _index({a.var}, {b.var})")
        return _V(t, a.type)

    def _n_TypeExpression(self, g: _Source, n: dict[str, Any], ft: str | None, tt: str | None, focus: str,
                          this: str, ind: int) -> _V:  # fmt: skip
        left = self._c(g, n["children"][0], ft, tt, focus, this, ind)
        type_name = _qualified(n["children"][1])
        if n["terminalNodeText"][0] == "is":
            return self._is(g, left, type_name, ind)
        return self._of_type(g, left, type_name, ind)

    # -- navigation --------------------------------------------------------------------------

    def _nav(self, g: _Source, src: str, keys: tuple[str, ...], primitive: bool, ind: int) -> str:
        t, i, v = g.tmp(), g.tmp("i"), g.tmp("v")
        item = g.items.get(src)
        if item is not None and len(keys) == 1:
            # the common case: one member of the one context item, no loop and no list to build
            key = keys[0]
            g.emit(ind, f"{v} = {item}.get({key!r}) if type({item}) is dict else None")
            if not primitive:
                g.emit(ind, f"{t} = _E if {v} is None else ({v} if type({v}) is list else [{v}])")
                return t
            g.emit(ind, f"if {v} is not None:")
            g.emit(
                ind + 1,
                f"{t} = [{v}] if type({v}) is not list else [x if x is not None else NO_VALUE for x in {v}]",
            )
            g.emit(ind, f"elif type({item}) is dict and {'_' + key!r} in {item}:")
            g.emit(ind + 1, f"{v} = {item}[{'_' + key!r}]")
            g.emit(ind + 1, f"{t} = [NO_VALUE] * len({v}) if type({v}) is list else [NO_VALUE]")
            g.emit(ind, "else:")
            g.emit(ind + 1, f"{t} = _E")
            return t
        g.emit(ind, f"{t} = []")
        if item is not None:
            g.emit(ind, f"{i} = {item}")
            g.emit(ind, f"if type({i}) is dict:")
            body = ind + 1
        else:
            g.emit(ind, f"for {i} in {src}:")
            g.emit(ind + 1, f"if type({i}) is dict:")
            body = ind + 2
        for key in keys:
            g.emit(body, f"{v} = {i}.get({key!r})")
            g.emit(body, f"if {v} is not None:")
            if primitive:
                g.emit(
                    body + 1,
                    f"if type({v}) is list: {t}.extend([x if x is not None else NO_VALUE for x in {v}])",
                )
            else:
                g.emit(body + 1, f"if type({v}) is list: {t}.extend({v})")
            g.emit(body + 1, f"else: {t}.append({v})")
            if primitive:
                # a primitive present only through its extensions exists, without a value
                g.emit(body, f"elif {'_' + key!r} in {i}:")
                g.emit(body + 1, f"{v} = {i}[{'_' + key!r}]")
                g.emit(
                    body + 1,
                    f"{t}.extend([NO_VALUE] * len({v})) if type({v}) is list else {t}.append(NO_VALUE)",
                )
        return t

    def _member(self, g: _Source, src: _V, name: str, ind: int) -> _V:
        name = name.strip("`")
        st = src.type
        if st is None:
            t = g.tmp()
            g.emit(ind, f"{t} = _dyn_member({src.var}, {name!r})")
            return _V(t, None)
        if st == _NOTHING:
            return src
        td = self.facts.types.get(st)
        if td is None:
            raise Unsupported(f"navigation from {st}")
        el = next((e for e in td.elements if e.name == name), None)
        if el is None:
            # FHIRPath: a name the type does not have selects nothing (us-core-3 on value[x]
            # reads "value.ofType(Quantity)" from every variant, the Quantity one included)
            return _V("_E", _NOTHING)
        if el.choice:
            keys = {tc: name + tc[0].upper() + tc[1:] for tc in el.types}
            return _V(self._nav(g, src.var, tuple(keys.values()), False, ind), None, (src.var, keys))
        tcode = el.types[0] if el.types else None
        primitive = tcode is not None and self.facts.is_primitive(tcode)
        return _V(self._nav(g, src.var, (name,), primitive, ind), tcode)

    def _of_type(self, g: _Source, src: _V, type_name: str, ind: int) -> _V:
        tn = _SYSTEM.get(type_name, type_name)
        if src.choice is not None:
            origin, keys = src.choice
            key = keys.get(type_name)
            if key is None:
                return _V("_E", type_name)
            return _V(self._nav(g, origin, (key,), self.facts.is_primitive(type_name), ind), type_name)
        if src.type is not None:
            if src.type == tn or tn in self._ancestors(src.type):
                return _V(src.var, src.type)
            return _V("_E", tn)
        if type_name in self._resource_types:
            t = g.tmp()
            g.emit(
                ind,
                f"{t} = [x for x in {src.var} if type(x) is dict and x.get('resourceType') == {type_name!r}]",
            )
            return _V(t, type_name)
        raise Unsupported(f"ofType({type_name}) on values of unknown type")

    def _is(self, g: _Source, src: _V, type_name: str, ind: int) -> _V:
        tn = _SYSTEM.get(type_name, type_name)
        t = g.tmp()
        if src.choice is not None:
            origin, keys = src.choice
            key = keys.get(type_name)
            if key is None:
                g.emit(ind, f"{t} = _F if {src.var} else _E")
            else:
                g.emit(ind, f"{t} = _E if not {src.var} else (_T if any(type(x) is dict and {key!r} in x "
                            f"for x in {origin}) else _F)")  # fmt: skip
            return _V(t, "System.Boolean")
        if src.type is None:
            if type_name not in self._resource_types:
                raise Unsupported(f"is {type_name} on values of unknown type")
            g.emit(ind, f"{t} = _E if not {src.var} else (_T if type({src.var}[0]) is dict and "
                        f"{src.var}[0].get('resourceType') == {type_name!r} else _F)")  # fmt: skip
            return _V(t, "System.Boolean")
        verdict = "_T" if src.type == tn or tn in self._ancestors(src.type) else "_F"
        g.emit(ind, f"{t} = {verdict} if {src.var} else _E")
        return _V(t, "System.Boolean")

    def _ancestors(self, type_name: str) -> set[str]:
        out: set[str] = set()
        td = self.facts.types.get(type_name)
        while td is not None and td.base:
            out.add(td.base)
            td = self.facts.types.get(td.base)
        return out

    # -- functions ---------------------------------------------------------------------------

    def _function(self, g: _Source, src: _V, inv: dict[str, Any], tt: str | None, this: str, ind: int) -> _V:
        functn = inv["children"][0]
        name = _identifier(functn["children"][0])
        params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
        nparams = len(params)
        if name != "not":
            src = self._coll(g, src, ind)
        s = src.var
        item_t = src.type
        t = g.tmp()

        def arg(i: int) -> _V:  # a plain argument: evaluated against the invocation's $this
            p = params[i]
            if not _context_free(p):
                raise Unsupported(f"argument of {name}() refers to the context")
            return self._c(g, p, tt, tt, this, this, ind)

        if nparams == 0:
            booleans = {
                "exists": f"len({s}) > 0",
                "empty": f"not {s}",
                "hasValue": f"len({s}) == 1 and {s}[0] is not NO_VALUE and type({s}[0]) is not dict "
                f"and type({s}[0]) is not list",  # fmt: skip
            }
            if name in booleans:
                g.emit(ind, f"{t} = {booleans[name]}")
                return _V(t, "System.Boolean", None, "bool", self.peepholes)
            simple = {
                "count": (f"[len({s})]", "System.Integer"),
                "first": (f"{s}[:1]", item_t),
                "last": (f"{s}[-1:]", item_t),
                "tail": (f"{s}[1:]", item_t),
                "single": (f"_single({s})", item_t),
                "distinct": (f"_distinct({s})", item_t),
                "isDistinct": (f"_T if len(_distinct({s})) == len({s}) else _F", "System.Boolean"),
                "children": (f"_children({s})", None),
                "descendants": (f"_descendants({s})", None),
                "resolve": (f"_resolve({s}, root)", None),
            }
            if name == "not":
                if src.definite:
                    g.emit(ind, f"{t} = not {src.var}")
                    return _V(t, "System.Boolean", None, "bool", True)
                g.emit(ind, f"{t} = {_truth_of(src)}")
                g.emit(ind, f"{t} = None if {t} is None else not {t}")
                return _V(t, "System.Boolean", None, "bool")
            if name in simple:
                code, rtype = simple[name]
                g.emit(ind, f"{t} = {code}")
                return _V(t, rtype)
            if name in ("allTrue", "anyTrue", "allFalse", "anyFalse"):
                g.emit(ind, f"{t} = _agg({s}, {name!r})")
                return _V(t, "System.Boolean")
            if name in ("toString", "length", "toInteger", "lower", "upper"):
                g.emit(ind, f"{t} = _strfn({s}, {name!r})")
                rt = {"length": "System.Integer", "toInteger": "System.Integer"}.get(name, "System.String")
                return _V(t, rt)
        if name in ("where", "all", "exists", "select") and nparams == 1:
            x, f = g.tmp("x"), g.tmp("f")
            start = {"where": "[]", "select": "[]", "exists": "_F", "all": "_T"}[name]
            g.emit(ind, f"{t} = {start}")
            g.emit(ind, f"for {x} in {s}:")
            g.emit(ind + 1, f"{f} = [{x}]")
            g.items[f] = x
            c = self._x(g, params[0], item_t, item_t, f, f, ind + 1)
            if name == "select":
                c = self._coll(g, c, ind + 1)
                g.emit(ind + 1, f"{t}.extend({c.var})")
                return _V(t, c.type)
            truth = _truth_of(c)
            if name == "where":
                g.emit(ind + 1, f"if {truth} is True: {t}.append({x})")
                return _V(t, item_t)
            if name == "exists":
                g.emit(ind + 1, f"if {truth} is True:")
                g.emit(ind + 2, f"{t} = _T")
                g.emit(ind + 2, "break")
            else:
                g.emit(ind + 1, f"if {truth} is not True:")
                g.emit(ind + 2, f"{t} = _F")
                g.emit(ind + 2, "break")
            return _V(t, "System.Boolean", None, "tfe")
        if name == "repeat" and nparams == 1:
            # each round reaches values of another type: navigate without static types
            step = g.const(self._function_of(params[0], None, "<fhirpath repeat>"))  # step(value, root)
            g.emit(ind, f"{t} = _repeat({s}, {step}, root)")
            return _V(t, None)
        if name in ("ofType", "as") and nparams == 1:
            return self._of_type(g, src, _qualified(params[0]), ind)
        if name == "is" and nparams == 1:
            return self._is(g, src, _qualified(params[0]), ind)
        if name == "trace" and nparams >= 1:
            return src
        if name == "iif" and nparams in (2, 3):
            c = self._x(g, params[0], item_t, tt, s, this, ind)
            b = g.tmp("b")
            g.emit(ind, f"{b} = {_truth_of(c)}")
            g.emit(ind, f"{t} = _E")
            g.emit(ind, f"if {b} is True:")
            yes = self._c(g, params[1], item_t, tt, s, this, ind + 1)
            g.emit(ind + 1, f"{t} = {yes.var}")
            no_type = yes.type
            if nparams == 3:
                g.emit(ind, "else:")
                no = self._c(g, params[2], item_t, tt, s, this, ind + 1)
                g.emit(ind + 1, f"{t} = {no.var}")
                no_type = no.type
            return _V(t, yes.type if yes.type == no_type else None)
        if name in ("matches", "startsWith", "endsWith", "contains") and nparams == 1:
            a = arg(0)
            g.emit(ind, f"{t} = _strop({s}, {a.var}, {name!r})")
            return _V(t, "System.Boolean")
        if name == "substring" and nparams in (1, 2):
            a = arg(0)
            b2 = arg(1).var if nparams == 2 else "None"
            g.emit(ind, f"{t} = _substring({s}, {a.var}, {b2})")
            return _V(t, "System.String")
        if name == "memberOf" and nparams == 1:
            a = arg(0)
            g.emit(ind, f"{t} = _member_of({s}, {a.var})")
            return _V(t, "System.Boolean")
        if name in ("intersect", "union", "combine", "exclude") and nparams == 1:
            a = arg(0)
            g.emit(ind, f"{t} = _setop({s}, {a.var}, {name!r})")
            return _V(t, item_t if item_t == a.type else None)
        raise Unsupported(f"{name}() with {nparams} arguments is not supported")


def _reads(code: str, name: str) -> bool:
    return re.search(rf"\b{name}\b", code) is not None


def _member_chain(n: dict[str, Any]) -> list[str] | None:
    """The member names of ``a.b.c`` (an expression of member invocations only), else None."""
    if n["type"] == "TermExpression":
        term = n["children"][0]
        if term["type"] == "InvocationTerm" and term["children"][0]["type"] == "MemberInvocation":
            return [_identifier(term["children"][0]).strip("`")]
        return None
    if n["type"] == "InvocationExpression" and n["children"][1]["type"] == "MemberInvocation":
        head = _member_chain(n["children"][0])
        return None if head is None else [*head, _identifier(n["children"][1]).strip("`")]
    return None


def _function_name(n: dict[str, Any]) -> str | None:
    """The name of a FunctionInvocation without arguments, else None."""
    if n["type"] != "FunctionInvocation":
        return None
    functn = n["children"][0]
    if len(functn["children"]) > 1:
        return None
    return _identifier(functn["children"][0])


def _identifier(n: dict[str, Any]) -> str:
    while n["type"] != "Identifier":
        n = n["children"][0]
    return str(n["terminalNodeText"][0])


def _qualified(n: dict[str, Any]) -> str:
    # A type specifier: "Quantity", "FHIR.Quantity", "System.String"; given as an argument it
    # parses as a member invocation chain.
    names: list[str] = []

    def walk(x: dict[str, Any]) -> None:
        if x["type"] == "Identifier":
            names.append(str(x["terminalNodeText"][0]).strip("`"))
        for c in x.get("children", ()):
            walk(c)

    walk(n)
    if len(names) == 2 and names[0] == "FHIR":
        return names[1]
    if len(names) == 2 and names[0] == "System":
        return names[1]
    if len(names) != 1:
        raise Unsupported(f"type specifier {'.'.join(names)}")
    return names[0]


def _context_free(n: dict[str, Any]) -> bool:
    """An argument that starts from a literal, %resource or $this, never from an implicit member."""
    kind = n["type"]
    if kind in ("LiteralTerm", "ExternalConstantTerm", "ThisInvocation"):
        return True
    if kind == "MemberInvocation" or kind == "FunctionInvocation":
        return False
    if kind == "InvocationExpression":
        return _context_free(n["children"][0])
    return all(_context_free(c) for c in n.get("children", ()))


_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt == "u" and i + 5 < len(s):
                out.append(chr(int(s[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
