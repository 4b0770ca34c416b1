"""A compiler for the subset of FHIRPath that search-parameter expressions use.

Each expression is parsed and type-checked once against the R4 structure facts and turned into
nested Python closures; evaluating it is then a few dict look-ups per step, with no parsing or
tree walking per call.  FHIR JSON does not say which type a value has (a choice element is
``valueQuantity``, a HumanName is just an object), so every value travels with its static FHIR
type as an ``Item`` = ``(type code, JSON value)``: the indexer needs to tell a Coding from a
CodeableConcept, a date from a Period.

What is covered: member paths (choice elements by their base name), ``|``, ``where``,
``exists``, ``empty``, ``not``, ``first``, ``last``, ``count``, ``ofType`` / ``as`` / ``is`` (operator
and function), ``extension(url)``, ``resolve()`` (only to test the target's type, from the literal
reference), ``[n]``, ``=``, ``!=``, ``and``, ``or``, ``xor``, ``implies``, string / number / boolean
literals and ``$this``.  Anything else raises ``FhirPathError`` at compile time, so a parameter is
either indexed faithfully or reported unsupported, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir_server.model.facts import Facts, get_facts

Item = tuple[str, Any]
Fn = Callable[[list[Item]], list[Item]]

# Static type of what resolve() yields: only a type test may follow it.
RESOLVED = "$resolved"
# FHIRPath literal types, spelled as the FHIR primitives they compare with.
_BOOL = "boolean"

_PRIMITIVE_BASE = {
    "code": "string", "id": "string", "markdown": "string",
    "url": "uri", "canonical": "uri", "oid": "uri", "uuid": "uri",
    "positiveInt": "integer", "unsignedInt": "integer",
}
# System types (and their unqualified names) map to the FHIR types whose values they hold.
_SYSTEM_TYPES = {
    "Boolean": "boolean", "String": "string", "Integer": "integer", "Decimal": "decimal",
    "Date": "date", "DateTime": "dateTime", "Time": "time", "Quantity": "Quantity",
}


class FhirPathError(ValueError):
    """The expression uses something this compiler does not support, or does not type-check."""


# ---------------------------------------------------------------------------------------------
# Parsing

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*')
    | (?P<num>\d+(?:\.\d+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<quoted>`[^`]*`)
    | (?P<var>%[A-Za-z_][A-Za-z0-9_]*|\$[A-Za-z]+)
    | (?P<op>!=|!~|<=|>=|[.()\[\],|=~<>+\-*/&])
    )""",
    re.VERBOSE,
)
_BINARY = {
    "implies": 1, "or": 2, "xor": 2, "and": 3, "in": 4, "contains": 4,
    "=": 5, "!=": 5, "~": 5, "!~": 5, "<": 6, ">": 6, "<=": 6, ">=": 6,
    "|": 7, "is": 8, "as": 8, "+": 9, "-": 9, "&": 9, "*": 10, "/": 10, "div": 10, "mod": 10,
}
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

Node = tuple[Any, ...]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FhirPathError(f"cannot parse at {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(1)), value[1:-1])
        elif kind == "quoted":
            kind, value = "ident", value[1:-1]
        tokens.append((kind, value))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise FhirPathError(f"expected {value or 'a token'}, got {tok[1] if tok else 'the end'}")
        self.pos += 1
        return tok

    def parse(self) -> Node:
        node = self.expression(0)
        if self.peek() is not None:
            raise FhirPathError(f"unexpected {self.peek()}")
        return node

    def expression(self, min_prec: int) -> Node:
        left = self.postfix(self.term())
        while True:
            tok = self.peek()
            if tok is None or tok[0] not in ("op", "ident") or tok[1] not in _BINARY:
                return left
            prec = _BINARY[tok[1]]
            if prec < min_prec:
                return left
            self.pos += 1
            if tok[1] in ("is", "as"):
                left = (tok[1], left, self.type_specifier())
            else:
                left = ("binop", tok[1], left, self.expression(prec + 1))

    def type_specifier(self) -> str:
        name = self.take()[1]
        while self.peek() == ("op", "."):
            self.pos += 1
            name += "." + self.take()[1]
        return name

    def term(self) -> Node:
        kind, value = self.take()
        if kind == "str":
            return ("literal", "string", value)
        if kind == "num":
            return ("literal", "decimal" if "." in value else "integer", value)
        if kind == "var":
            if value == "$this":
                return ("this",)
            raise FhirPathError(f"variable {value} is not supported")
        if kind == "ident":
            if value in ("true", "false"):
                return ("literal", _BOOL, value == "true")
            if self.peek() == ("op", "("):
                return ("call", None, value, self.arguments())
            return ("member", None, value)
        if value == "(":
            node = self.expression(0)
            self.take(")")
            return node
        nxt = self.peek()
        if value == "-" and nxt is not None and nxt[0] == "num":
            num = self.take()[1]
            return ("literal", "decimal" if "." in num else "integer", "-" + num)
        raise FhirPathError(f"unexpected {value!r}")

    def arguments(self) -> list[Node]:
        self.take("(")
        args: list[Node] = []
        if self.peek() == ("op", ")"):
            self.pos += 1
            return args
        while True:
            args.append(self.expression(0))
            if self.take()[1] == ")":
                return args

    def postfix(self, node: Node) -> Node:
        while True:
            tok = self.peek()
            if tok == ("op", "."):
                self.pos += 1
                name = self.take()[1]
                if self.peek() == ("op", "("):
                    node = ("call", node, name, self.arguments())
                else:
                    node = ("member", node, name)
            elif tok == ("op", "["):
                self.pos += 1
                index = self.expression(0)
                self.take("]")
                node = ("index", node, index)
            else:
                return node


def parse(text: str) -> Node:
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------------------
# Types


@cache
def _ancestors(type_code: str) -> frozenset[str]:
    """The type and every type it derives from (Age -> Quantity -> Element)."""
    facts = get_facts()
    out = {type_code}
    t: str | None = type_code
    while t is not None:
        if t in _PRIMITIVE_BASE:
            t = _PRIMITIVE_BASE[t]
        elif t in facts.types:
            td = facts.types[t]
            t = td.base if td.kind != "backbone" else "BackboneElement"
            if td.kind == "resource":
                out.update(("Resource", "DomainResource") if td.base == "DomainResource" else ("Resource",))
                t = None
        else:
            t = None
        if t is not None:
            out.add(t)
    return frozenset(out)


def _type_name(spec: str) -> str:
    ns, _, name = spec.rpartition(".")
    if ns == "System" or (not ns and name in _SYSTEM_TYPES):
        return _SYSTEM_TYPES.get(name, name)
    if ns not in ("", "FHIR"):
        raise FhirPathError(f"unknown type {spec}")
    return name


def _is_type(item_type: str, wanted: str) -> bool:
    if item_type == wanted:
        return True
    return wanted in _ancestors(item_type)


def _known_type(facts: Facts, name: str) -> bool:
    return name in facts.types or name in facts.primitives or name in ("Resource", "DomainResource")


# ---------------------------------------------------------------------------------------------
# Runtime helpers (kept small: they run for every resource written)


def _to_bool(items: list[Item]) -> bool | None:
    """FHIRPath singleton evaluation in a boolean context: empty is unknown.

    Several items are an error in FHIRPath; a write must not fail on it, so they count as unknown."""
    if len(items) != 1:
        return None
    value = items[0][1]
    return value if value is True or value is False else True


def _values_equal(a: Any, b: Any) -> bool:
    # bool is an int in Python; FHIRPath never equates true with 1.
    if (a is True or a is False) != (b is True or b is False):
        return False
    return bool(a == b)


@cache
def resource_type_names() -> frozenset[str]:
    return frozenset(get_facts().r4_resource_types)


def _reference_type(value: Any) -> str | None:
    """The resource type a Reference (or canonical/uri) points at: the type part of its literal
    text, else Reference.type.  Nothing is read, so a contained (#id) or urn: reference without
    Reference.type has no known type."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str):
            found = _literal_type(ref)
            if found:
                return found
        typ = value.get("type")
        return typ if isinstance(typ, str) and typ in resource_type_names() else None
    return _literal_type(value) if isinstance(value, str) else None


_REF_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def _literal_type(ref: str) -> str | None:
    m = _REF_TYPE.search(ref.partition("|")[0])
    return m.group(1) if m and m.group(1) in resource_type_names() else None


# ---------------------------------------------------------------------------------------------
# Compilation


@dataclass(frozen=True, slots=True)
class Compiled:
    expression: str
    fn: Fn
    types: frozenset[str]  # static types of the results
    # JSON keys of the focus object of which at least one must be present for a non-empty result;
    # None when that can't be said (exists(), literals, comparisons).  Lets a caller skip the call.
    needs: frozenset[str] | None = None

    def __call__(self, focus: list[Item]) -> list[Item]:
        return self.fn(focus)


def compile_expression(expression: str, context_types: str | Iterable[str]) -> Compiled:
    """Compile ``expression`` for a focus of the given static type(s). Raises FhirPathError."""
    types = frozenset([context_types] if isinstance(context_types, str) else context_types)
    compiler = _Compiler(get_facts())
    node = parse(expression)
    fn, out = compiler.compile(node, types)
    return Compiled(expression, fn, out, compiler.needs(node, types))


def evaluate(compiled: Compiled, resource_type: str, resource: dict[str, Any]) -> list[Item]:
    return compiled.fn([(resource_type, resource)])


def _identity(items: list[Item]) -> list[Item]:
    return items


class _Compiler:
    def __init__(self, facts: Facts) -> None:
        self.facts = facts

    def compile(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        kind = node[0]
        method = getattr(self, "_c_" + kind, None)
        if method is None:
            raise FhirPathError(f"unsupported construct {kind}")
        result: tuple[Fn, frozenset[str]] = method(node, types)
        return result

    def needs(self, node: Node, types: frozenset[str]) -> frozenset[str] | None:
        """The focus keys the result depends on (see Compiled.needs)."""
        kind = node[0]
        if kind == "binop" and node[1] == "|":
            left, right = self.needs(node[2], types), self.needs(node[3], types)
            return None if left is None or right is None else left | right
        if kind == "as" or (kind == "call" and node[2] in _EMPTY_IN_EMPTY_OUT and node[1] is not None):
            return self.needs(node[1], types)
        if kind == "index":
            return self.needs(node[1], types)
        if kind != "member":
            return None
        names: list[str] = []
        bottom: Node | None = node
        while bottom is not None and bottom[0] == "member":
            names.append(bottom[2])
            bottom = bottom[1]
        if bottom is not None:
            return self.needs(bottom, types)
        names.reverse()
        if names[0][:1].isupper() and not self._has_member(types, names[0]):
            names = names[1:]  # the type name filter: the focus itself
        if not names:
            return None
        return frozenset(key for t in types for key, _ in self._member_table(t, names[0])) or None

    # -- terms ---------------------------------------------------------------------------------

    def _c_this(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        return _identity, types

    def _c_literal(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        _, typ, value = node
        result: list[Item] = [(typ, value)]

        def literal(items: list[Item]) -> list[Item]:
            return result

        return literal, frozenset([typ])

    def _c_member(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        return self._path(node, types, None)

    def _path(self, node: Node, types: frozenset[str], last_type: str | None) -> tuple[Fn, frozenset[str]]:
        """A chain of member steps (a.b.c), compiled as one function when every step is a
        single element of a single type; ``last_type`` keeps only the last step's values of that
        type (``value as Quantity`` reads ``valueQuantity`` and nothing else)."""
        names: list[str] = []
        bottom: Node | None = node
        while bottom is not None and bottom[0] == "member":
            names.append(bottom[2])
            bottom = bottom[1]
        names.reverse()
        base_fn: Fn | None = None
        base_types = types
        if bottom is not None:
            base_fn, base_types = self.compile(bottom, types)
        else:
            first = names[0]
            # An expression that starts with a type name (Patient.name, Resource.meta) filters
            # the focus on that type instead of reading an element.
            if first[:1].isupper() and _known_type(self.facts, first) and not self._has_member(types, first):
                matching = frozenset(t for t in types if _is_type(t, first))
                if not matching:
                    raise FhirPathError(f"{first} does not match the context {sorted(types)}")
                if matching != types:
                    base_fn, base_types = self._type_filter(None, matching, first)
                names = names[1:]
        if not names:
            if last_type is not None:
                return self._type_filter(base_fn, self._matching(base_types, last_type), last_type)
            return base_fn or _identity, base_types
        tables: list[dict[str, tuple[tuple[str, str], ...]]] = []
        step_types = base_types
        for i, name in enumerate(names):
            table = self._member_tables(step_types, name)
            if last_type is not None and i == len(names) - 1:
                kept = {t: tuple(p for p in pairs if _is_type(p[1], last_type)) for t, pairs in table.items()}
                table = {t: pairs for t, pairs in kept.items() if pairs}
                if not table:
                    raise FhirPathError(f"{name} can never be a {last_type}")
            tables.append(table)
            step_types = frozenset(rt for pairs in table.values() for _, rt in pairs)
        # With one input type and one element per inner step, every step has a single type.
        simple = len(base_types) == 1 and all(len(next(iter(tb.values()))) == 1 for tb in tables[:-1])
        if simple:
            keys = tuple(next(iter(tb.values()))[0][0] for tb in tables[:-1])
            step = _fused_path(keys, next(iter(tables[-1].values())))
        else:
            step = _identity
            for tb in tables:
                step = _chain(step, _member_fn(tb))
        return _chain(base_fn, step), step_types

    def _has_member(self, types: frozenset[str], name: str) -> bool:
        return any(self._member_table(t, name) for t in types)

    def _member_table(self, type_code: str, name: str) -> list[tuple[str, str]]:
        td = self.facts.types.get(type_code)
        if td is None:
            return []
        pair = td.members.get(name)
        if pair is not None:
            # A typed choice name (valueDateTime) is how JSON spells it; US Core's asserted-date
            # uses it, and fhirpath.js accepts it.
            return [(name, pair[1])]
        for el in td.elements:
            if el.name == name and el.choice:
                return [(name + tc[0].upper() + tc[1:], tc) for tc in el.types]
        return []

    def _member_tables(self, types: frozenset[str], name: str) -> dict[str, tuple[tuple[str, str], ...]]:
        if RESOLVED in types:
            raise FhirPathError("only a type test may follow resolve()")
        table = {t: tuple(self._member_table(t, name)) for t in types}
        table = {t: pairs for t, pairs in table.items() if pairs}
        if not table:
            raise FhirPathError(f"no element {name!r} on {', '.join(sorted(types))}")
        return table

    def _member_step(self, types: frozenset[str], name: str) -> tuple[Fn, frozenset[str]]:
        table = self._member_tables(types, name)
        return _member_fn(table), frozenset(rt for pairs in table.values() for _, rt in pairs)

    # -- operators ------------------------------------------------------------------------------

    def _c_index(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        _, base, index = node
        if index[0] != "literal" or index[1] != "integer":
            raise FhirPathError("only a literal integer index is supported")
        base_fn, out = self.compile(base, types)
        i = int(index[2])

        def at(items: list[Item]) -> list[Item]:
            return base_fn(items)[i:i + 1]

        return at, out

    def _c_is(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        _, operand, spec = node
        fn, operand_types = self.compile(operand, types)
        return self._type_test(fn, operand_types, _type_name(spec))

    def _c_as(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        _, operand, spec = node
        name = _type_name(spec)
        if operand[0] == "member":
            return self._path(operand, types, name)
        fn, operand_types = self.compile(operand, types)
        return self._type_filter(fn, self._matching(operand_types, name), name)

    def _matching(self, types: frozenset[str], name: str) -> frozenset[str]:
        if not _known_type(self.facts, name):
            raise FhirPathError(f"unknown type {name}")
        if RESOLVED in types:
            return types
        matching = frozenset(t for t in types if _is_type(t, name))
        if not matching:
            raise FhirPathError(f"{' | '.join(sorted(types))} can never be a {name}")
        return matching

    def _type_filter(self, fn: Fn | None, matching: frozenset[str], name: str) -> tuple[Fn, frozenset[str]]:
        if RESOLVED in matching:
            raise FhirPathError("resolve() may only be tested with 'is'")
        keep = frozenset(t for t in matching if _is_type(t, name))

        def of_type(items: list[Item]) -> list[Item]:
            return [it for it in items if it[0] in keep]

        return _chain(fn, of_type), keep

    def _type_test(self, fn: Fn, types: frozenset[str], name: str) -> tuple[Fn, frozenset[str]]:
        if RESOLVED in types:
            if name not in self.facts.r4_resource_types and name not in ("Resource", "DomainResource"):
                raise FhirPathError(f"resolve() is {name}: not a resource type")
        else:
            self._matching(types, name)

        def is_type(items: list[Item]) -> list[Item]:
            found = fn(items)
            # Several items are an error in FHIRPath; at write time "unknown" is the safe answer.
            if len(found) != 1:
                return []
            return [(_BOOL, _is_type(found[0][0], name))]

        return is_type, frozenset([_BOOL])

    def _c_binop(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        _, op, left, right = node
        lf, lt = self.compile(left, types)
        rf, rt = self.compile(right, types)
        if op == "|":
            def union(items: list[Item]) -> list[Item]:
                return lf(items) + rf(items)

            return union, lt | rt
        if op in ("=", "!="):
            negate = op == "!="

            def equals(items: list[Item]) -> list[Item]:
                a = lf(items)
                b = rf(items)
                if not a or not b:
                    return []
                same = len(a) == len(b) and all(_values_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
                return [(_BOOL, same != negate)]

            return equals, frozenset([_BOOL])
        logic = _LOGIC.get(op)
        if logic is None:
            raise FhirPathError(f"operator {op} is not supported")

        def boolean(items: list[Item]) -> list[Item]:
            result = logic(_to_bool(lf(items)), _to_bool(rf(items)))
            return [] if result is None else [(_BOOL, result)]

        return boolean, frozenset([_BOOL])

    # -- functions ------------------------------------------------------------------------------

    def _c_call(self, node: Node, types: frozenset[str]) -> tuple[Fn, frozenset[str]]:
        _, base, name, args = node
        if name in ("as", "ofType") and base is not None and base[0] == "member":
            return self._path(base, types, self._type_arg(name, args))
        if base is None:
            base_fn: Fn | None = None
            base_types = types
        else:
            base_fn, base_types = self.compile(base, types)
        builder = getattr(self, "_f_" + name, None)
        if builder is None:
            raise FhirPathError(f"function {name}() is not supported")
        fn, out = builder(base_types, args)
        return _chain(base_fn, fn), out

    def _arity(self, name: str, args: list[Node], n: int) -> None:
        if len(args) != n:
            raise FhirPathError(f"{name}() takes {n} argument(s)")

    def _type_arg(self, name: str, args: list[Node]) -> str:
        self._arity(name, args, 1)
        node = args[0]
        parts: list[str] = []
        while node[0] == "member":
            parts.append(node[2])
            if node[1] is None:
                return _type_name(".".join(reversed(parts)))
            node = node[1]
        raise FhirPathError(f"{name}() needs a type name")

    def _f_where(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("where", args, 1)
        fast = self._fast_predicate(args[0], types)
        if fast is not None:
            test = fast

            def where_fast(items: list[Item]) -> list[Item]:
                return [it for it in items if test(it[1])]

            return where_fast, types
        crit, _ = self.compile(args[0], types)

        def where(items: list[Item]) -> list[Item]:
            return [it for it in items if _to_bool(crit([it])) is True]

        return where, types

    def _fast_predicate(self, node: Node, types: frozenset[str]) -> Callable[[Any], bool] | None:
        """Direct tests for the two criteria nearly every where() uses, with FHIRPath's answer:
        ``element = 'literal'`` on a single primitive element, and ``resolve() is Type``."""
        if (
            node[0] == "binop" and node[1] == "=" and node[2][0] == "member" and node[2][1] is None
            and node[3][0] == "literal" and node[3][1] == "string"
        ):
            key, literal = node[2][2], node[3][2]
            for t in types:
                td = self.facts.types.get(t)
                pair = td.members.get(key) if td else None
                if pair is None or pair[0].choice or pair[0].is_array or pair[1] not in self.facts.primitives:
                    return None

            def equals_literal(value: Any) -> bool:
                return type(value) is dict and value.get(key) == literal

            return equals_literal
        if (
            node[0] == "is" and node[1] == ("call", None, "resolve", [])
            and types <= {"Reference", "canonical", "uri", "url"}
        ):
            wanted = _type_name(node[2])
            if wanted not in self.facts.r4_resource_types:
                return None

            def resolves_to(value: Any) -> bool:
                return _reference_type(value) == wanted

            return resolves_to
        return None

    def _f_exists(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        if args:
            where, _ = self._f_where(types, args)

            def exists_where(items: list[Item]) -> list[Item]:
                return [(_BOOL, bool(where(items)))]

            return exists_where, frozenset([_BOOL])

        def exists(items: list[Item]) -> list[Item]:
            return [(_BOOL, bool(items))]

        return exists, frozenset([_BOOL])

    def _f_empty(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("empty", args, 0)

        def empty(items: list[Item]) -> list[Item]:
            return [(_BOOL, not items)]

        return empty, frozenset([_BOOL])

    def _f_not(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("not", args, 0)

        def not_(items: list[Item]) -> list[Item]:
            value = _to_bool(items)
            return [] if value is None else [(_BOOL, not value)]

        return not_, frozenset([_BOOL])

    def _f_count(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("count", args, 0)

        def count(items: list[Item]) -> list[Item]:
            return [("integer", len(items))]

        return count, frozenset(["integer"])

    def _f_first(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("first", args, 0)

        def first(items: list[Item]) -> list[Item]:
            return items[:1]

        return first, types

    def _f_last(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("last", args, 0)

        def last(items: list[Item]) -> list[Item]:
            return items[-1:]

        return last, types

    def _f_ofType(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:  # noqa: N802
        name = self._type_arg("ofType", args)
        return self._type_filter(None, self._matching(types, name), name)

    _f_as = _f_ofType

    def _f_is(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        return self._type_test(_identity, types, self._type_arg("is", args))

    def _f_extension(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("extension", args, 1)
        if args[0][0] != "literal" or args[0][1] != "string":
            raise FhirPathError("extension() needs a literal url")
        url = args[0][2]
        step, out = self._member_step(types, "extension")

        def extension(items: list[Item]) -> list[Item]:
            return [it for it in step(items) if type(it[1]) is dict and it[1].get("url") == url]

        return extension, out

    def _f_resolve(self, types: frozenset[str], args: list[Node]) -> tuple[Fn, frozenset[str]]:
        self._arity("resolve", args, 0)
        if not types <= {"Reference", "canonical", "uri", "url"}:
            raise FhirPathError(f"resolve() on {', '.join(sorted(types))}")

        # No resource is read: the "resolved" item only carries the type the reference names, which
        # is all that `where(resolve() is Patient)` needs.
        def resolve(items: list[Item]) -> list[Item]:
            out: list[Item] = []
            for _, value in items:
                target = _reference_type(value)
                if target is not None:
                    out.append((target, None))
            return out

        return resolve, frozenset([RESOLVED])


# Functions whose result is empty when their input is.
_EMPTY_IN_EMPTY_OUT = frozenset({"where", "first", "last", "ofType", "as", "extension", "resolve"})


def _logic_and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return True if a is True and b is True else None


def _logic_or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return False if a is False and b is False else None


def _logic_xor(a: bool | None, b: bool | None) -> bool | None:
    return None if a is None or b is None else a != b


def _logic_implies(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is True:
        return True
    return False if a is True and b is False else None


_LOGIC: dict[str, Callable[[bool | None, bool | None], bool | None]] = {
    "and": _logic_and, "or": _logic_or, "xor": _logic_xor, "implies": _logic_implies,
}


def _chain(first: Fn | None, then: Fn) -> Fn:
    if first is None or first is _identity:
        return then
    if then is _identity:
        return first

    def chained(items: list[Item]) -> list[Item]:
        return then(first(items))

    return chained


# A choice element with more types than this is found by scanning the object's keys (an Extension
# has 2 or 3) instead of trying each of its up to 50 typed names.
_SCAN_OVER = 4


def _read(value: dict[str, Any], pairs: tuple[tuple[str, str], ...], scan: dict[str, str] | None,
          out: list[Item]) -> None:
    if scan is not None:
        for key, found in value.items():
            result_type = scan.get(key)
            if result_type is None or found is None:
                continue
            if type(found) is list:
                out.extend((result_type, x) for x in found if x is not None)
            else:
                out.append((result_type, found))
        return
    for key, result_type in pairs:
        found = value.get(key)
        if found is None:
            continue
        if type(found) is list:
            out.extend((result_type, x) for x in found if x is not None)
        else:
            out.append((result_type, found))


def _scan_table(pairs: tuple[tuple[str, str], ...]) -> dict[str, str] | None:
    return dict(pairs) if len(pairs) > _SCAN_OVER else None


def _fused_path(keys: tuple[str, ...], last: tuple[tuple[str, str], ...]) -> Fn:
    """Walk ``keys`` (each one element of one type), then read the last element, which may be a
    choice (several (JSON key, type) pairs, at most one present)."""
    scan = _scan_table(last)
    single = last[0] if len(last) == 1 else None

    def path(items: list[Item]) -> list[Item]:
        values: list[Any] = [v for _, v in items]
        for key in keys:
            found: list[Any] = []
            for v in values:
                if type(v) is dict:
                    x = v.get(key)
                    if x is not None:
                        if type(x) is list:
                            found.extend(x)
                        else:
                            found.append(x)
            if not found:
                return []
            values = found
        out: list[Item] = []
        if single is not None:
            key, result_type = single
            for v in values:
                if type(v) is dict:
                    x = v.get(key)
                    if x is None:
                        continue
                    if type(x) is list:
                        out.extend((result_type, y) for y in x if y is not None)
                    else:
                        out.append((result_type, x))
            return out
        for v in values:
            if type(v) is dict:
                _read(v, last, scan, out)
        return out

    return path


def _member_fn(table: dict[str, tuple[tuple[str, str], ...]]) -> Fn:
    plan = {t: (pairs, _scan_table(pairs)) for t, pairs in table.items()}

    def member(items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for item_type, value in items:
            entry = plan.get(item_type)
            if entry is not None and type(value) is dict:
                _read(value, entry[0], entry[1], out)
        return out

    return member
