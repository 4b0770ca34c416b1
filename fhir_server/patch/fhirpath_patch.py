"""FHIR R4 FHIRPath Patch (fhirpatch.html): a Parameters resource of add | insert | delete | replace | move.

The paths are evaluated by a small FHIRPath subset that remembers where each selected element sits
(the JSON object holding it, the member name, the list position), so that it can be changed in place:

- an optional leading type name (``Patient``, also ``Resource`` / ``DomainResource``), member
  navigation (choice elements by their base name: ``Observation.value`` finds ``valueQuantity``),
  the indexer ``[n]``, ``first()``, ``last()``, ``ofType(Type)``;
- ``where(criteria)`` where criteria combine, with ``and`` / ``or`` / parentheses, comparisons
  ``path = literal`` and ``path != literal`` (string, number or boolean literals; ``$this`` for the
  element itself), ``path.exists()``, ``path.empty()``, ``.not()`` and a bare boolean ``path``.

Whether a new member is a list and which JSON type a primitive takes comes from the R4 structure facts.
Primitive extensions (``_given``) are not handled: touching an element that has them is refused.

Errors name the failing operation by its 0-based position: 400 when the Parameters document or a
path is malformed or unsupported, 422 when a well-formed operation cannot be applied to this resource.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

from fhir_server.errors import FhirError, OutcomeIssue
from fhir_server.model.facts import ElementDef, get_facts
from fhir_server.model.jsonio import JsonDecimal, clone, number_value
from fhir_server.patch.failure import PatchFailure, inapplicable, malformed

__all__ = ["apply_fhirpath_patch"]

_UNSUPPORTED = "unsupported FHIRPath in patch path"


_Failure = PatchFailure
_malformed = malformed
_inapplicable = inapplicable


# ================================================================================================
# FHIRPath: tokens
# ================================================================================================

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | `(?P<delimited>[^`]*)`
    | '(?P<string>(?:[^'\\]|\\.)*)'
    | (?P<number>[0-9]+(?:\.[0-9]+)?)
    | (?P<this>\$this)
    | (?P<punct>!=|[.()\[\]=-])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # ident | name (a `delimited` identifier, never a keyword) | string | number | this | punct | end
    text: str
    pos: int


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise _malformed(f"{_UNSUPPORTED} {source!r}: unexpected {source[pos]!r} at position {pos}")
        kind = m.lastgroup or "space"
        if kind == "delimited":
            tokens.append(_Token("name", m.group("delimited"), pos))
        elif kind == "string":
            tokens.append(_Token("string", _unescape(m.group("string"), source), pos))
        elif kind != "space":
            tokens.append(_Token(kind, m.group(kind), pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(source)))
    return tokens


def _unescape(body: str, source: str) -> str:
    def one(m: re.Match[str]) -> str:
        escape = m.group(1)
        if escape[0] == "u" and len(escape) == 5:
            return chr(int(escape[1:], 16))
        if escape not in _ESCAPES:
            raise _malformed(f"{_UNSUPPORTED} {source!r}: unknown escape \\{escape} in a string")
        return _ESCAPES[escape]

    return _ESCAPE.sub(one, body)


# ================================================================================================
# FHIRPath: syntax tree and parser
# ================================================================================================


@dataclass(frozen=True, slots=True)
class _Member:
    name: str


@dataclass(frozen=True, slots=True)
class _Index:
    index: int


@dataclass(frozen=True, slots=True)
class _Func:
    name: str  # first | last, and in criteria also exists | empty | not


@dataclass(frozen=True, slots=True)
class _Where:
    criteria: _Criterion


@dataclass(frozen=True, slots=True)
class _OfType:
    type_name: str


_Step = _Member | _Index | _Func | _Where | _OfType
_Literal = str | bool | int | Decimal


@dataclass(frozen=True, slots=True)
class _Or:
    left: _Criterion
    right: _Criterion


@dataclass(frozen=True, slots=True)
class _And:
    left: _Criterion
    right: _Criterion


@dataclass(frozen=True, slots=True)
class _Not:
    operand: _Criterion


@dataclass(frozen=True, slots=True)
class _Exists:
    steps: tuple[_Step, ...]
    empty: bool  # True for empty(), the negation of exists()


@dataclass(frozen=True, slots=True)
class _Compare:
    steps: tuple[_Step, ...]
    negate: bool  # True for !=
    literal: _Literal


@dataclass(frozen=True, slots=True)
class _Truthy:
    steps: tuple[_Step, ...]


_Criterion = _Or | _And | _Not | _Exists | _Compare | _Truthy


@dataclass(frozen=True, slots=True)
class _Path:
    text: str
    root: str | None  # the leading type name, if the path has one
    steps: tuple[_Step, ...]


_BOOLEAN_FUNCTIONS = ("exists", "empty", "not")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.pos = 0

    def fail(self, detail: str) -> _Failure:
        return _malformed(f"{_UNSUPPORTED} {self.source!r}: {detail}")

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        if token.kind != "end":
            self.pos += 1
        return token

    def at(self, text: str, kind: str = "punct") -> bool:
        token = self.peek()
        return token.kind == kind and token.text == text

    def expect(self, text: str) -> None:
        if not self.at(text):
            raise self.fail(f"expected {text!r} at position {self.peek().pos}, found {self._shown(self.peek())}")
        self.take()

    @staticmethod
    def _shown(token: _Token) -> str:
        return "the end" if token.kind == "end" else repr(token.text)

    def name(self) -> str:
        token = self.take()
        if token.kind not in ("ident", "name"):
            raise self.fail(f"expected an element name at position {token.pos}, found {self._shown(token)}")
        return token.text

    # --- paths --------------------------------------------------------------------------------

    def path(self) -> _Path:
        root: str | None = None
        first = self.peek()
        if first.kind == "ident" and first.text[:1].isupper():
            root = self.take().text  # FHIR type names start upper case, element names lower case
            steps = self.steps()
        else:
            steps = (self.member(),) + self.steps()
        if self.peek().kind != "end":
            raise self.fail(f"unexpected {self._shown(self.peek())} at position {self.peek().pos}")
        for step in steps:
            if isinstance(step, _Func) and step.name in _BOOLEAN_FUNCTIONS:
                raise self.fail(f"{step.name}() gives a boolean, not elements to patch")
        return _Path(self.source, root, steps)

    def member(self) -> _Member:
        return _Member(self.name())

    def steps(self) -> tuple[_Step, ...]:
        steps: list[_Step] = []
        while True:
            if self.at("."):
                self.take()
                steps.append(self.invocation())
            elif self.at("["):
                self.take()
                steps.append(_Index(self.index()))
                self.expect("]")
            else:
                return tuple(steps)

    def index(self) -> int:
        token = self.take()
        if token.kind != "number" or not token.text.isdigit():
            raise self.fail(f"an indexer needs a non-negative integer, found {self._shown(token)}")
        return int(token.text)

    def invocation(self) -> _Step:
        name = self.name()
        if not self.at("("):
            return _Member(name)
        self.take()
        step: _Step
        if name in ("first", "last") or name in _BOOLEAN_FUNCTIONS:
            step = _Func(name)
        elif name == "where":
            step = _Where(self.criteria())
        elif name == "ofType":
            step = _OfType(self.type_specifier())
        else:
            raise self.fail(f"the function {name}() is not supported")
        if not self.at(")"):
            raise self.fail(f"{name}() takes {'no arguments' if isinstance(step, _Func) else 'one argument'}")
        self.take()
        return step

    def type_specifier(self) -> str:
        name = self.name()
        if self.at("."):
            self.take()
            if name != "FHIR":
                raise self.fail(f"only FHIR types can be named in ofType(), not {name}.*")
            name = self.name()
        return name

    # --- where() criteria ---------------------------------------------------------------------

    def criteria(self) -> _Criterion:
        left = self.conjunction()
        while self.at("or", "ident"):
            self.take()
            left = _Or(left, self.conjunction())
        return left

    def conjunction(self) -> _Criterion:
        left = self.condition()
        while self.at("and", "ident"):
            self.take()
            left = _And(left, self.condition())
        return left

    def condition(self) -> _Criterion:
        if self.at("("):
            self.take()
            inner = self.criteria()
            self.expect(")")
            return self.negations(inner)
        left = self.operand()
        if not (self.at("=") or self.at("!=")):
            if not isinstance(left, tuple):
                raise self.fail("a literal alone is not a criterion")
            return self.boolean_path(left)
        negate = self.take().text == "!="
        right = self.operand()
        if isinstance(left, tuple) and not isinstance(right, tuple):
            return _Compare(left, negate, right)
        if isinstance(right, tuple) and not isinstance(left, tuple):
            return _Compare(right, negate, left)
        raise self.fail("a comparison needs an element path on one side and a literal on the other")

    def negations(self, criterion: _Criterion) -> _Criterion:
        while self.at("."):
            self.take()
            if self.name() != "not" or not self.at("("):
                raise self.fail("only .not() may follow a parenthesised criterion")
            self.take()
            self.expect(")")
            criterion = _Not(criterion)
        return criterion

    def boolean_path(self, steps: tuple[_Step, ...]) -> _Criterion:
        negations = 0
        while steps and steps[-1] == _Func("not"):
            steps, negations = steps[:-1], negations + 1
        criterion: _Criterion
        if steps and isinstance(steps[-1], _Func) and steps[-1].name in ("exists", "empty"):
            criterion = _Exists(steps[:-1], steps[-1].name == "empty")
        else:
            criterion = _Truthy(steps)
        for step in criterion.steps:
            if isinstance(step, _Func) and step.name in _BOOLEAN_FUNCTIONS:
                raise self.fail(f"{step.name}() may only end a criterion")
        for _ in range(negations):
            criterion = _Not(criterion)
        return criterion

    def operand(self) -> tuple[_Step, ...] | _Literal:
        token = self.peek()
        if token.kind == "string":
            return self.take().text
        if token.kind == "number" or self.at("-"):
            return self.number()
        if token.kind == "ident" and token.text in ("true", "false"):
            return self.take().text == "true"
        if token.kind == "this":
            self.take()
            steps = self.steps()
        elif token.kind in ("ident", "name"):
            steps = (self.member(),) + self.steps()
        else:
            raise self.fail(f"unexpected {self._shown(token)} at position {token.pos}")
        if any(isinstance(s, _Func) and s.name in _BOOLEAN_FUNCTIONS for s in steps) and (
            self.at("=") or self.at("!=")
        ):
            raise self.fail("a boolean function result cannot be compared")
        return steps

    def number(self) -> int | Decimal:
        sign = "-" if self.at("-") else ""
        if sign:
            self.take()
        token = self.take()
        if token.kind != "number":
            raise self.fail(f"expected a number at position {token.pos}, found {self._shown(token)}")
        return Decimal(sign + token.text) if "." in token.text else int(sign + token.text)


@lru_cache(maxsize=512)
def _parse_path(source: str) -> _Path:
    return _Parser(source).path()


# ================================================================================================
# FHIRPath: evaluation over the JSON tree, keeping each element's location
# ================================================================================================


@dataclass(frozen=True, slots=True)
class _Element:
    definition: ElementDef
    members: tuple[tuple[str, str], ...]  # every (JSON member name, type code) of the element


@dataclass(frozen=True, slots=True)
class _Node:
    value: Any
    type_code: str  # the concrete type; a resource's own type for contained resources
    element: _Element | None  # None for the resource being patched
    parent: dict[str, Any] | None  # the JSON object whose member holds the value
    member: str  # that member's JSON name ("valueQuantity", not "value")
    index: int | None  # position in the member's array; None for a single value


@cache
def _elements(type_code: str) -> dict[str, tuple[_Element, tuple[tuple[str, str], ...]]]:
    """FHIRPath name -> (element, the members that name selects).

    A choice element answers to its base name (all of its typed members) and, leniently, to each
    typed JSON name (``valueQuantity``: that member only).
    """
    typedef = get_facts().types.get(type_code)
    if typedef is None:
        return {}
    grouped: dict[str, list[tuple[str, str]]] = {}
    definitions: dict[str, ElementDef] = {}
    for json_name, (definition, member_type) in typedef.members.items():
        grouped.setdefault(definition.name, []).append((json_name, member_type))
        definitions[definition.name] = definition
    table: dict[str, tuple[_Element, tuple[tuple[str, str], ...]]] = {}
    for name, members in grouped.items():
        element = _Element(definitions[name], tuple(members))
        table[name] = (element, element.members)
        if element.definition.choice:
            for member in element.members:
                table.setdefault(member[0], (element, (member,)))
    return table


def _concrete_type(type_code: str, value: Any) -> str:
    if type_code == "Resource" and isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        return str(value["resourceType"])
    return type_code


def _is_polymorphic(node: _Node) -> bool:
    """Whether the node's element admits several types, so a name missing on this one may exist on another."""
    return node.element is not None and (node.element.definition.choice or "Resource" in node.element.definition.types)


def _children(node: _Node, name: str) -> list[_Node]:
    if not isinstance(node.value, dict):
        if _is_polymorphic(node) and name not in ("extension", "id"):
            return []
        if name in ("extension", "id"):
            raise _Failure(400, "not-supported", f"{_UNSUPPORTED}: the id and extensions of a primitive "
                           f"({node.type_code} in {node.member}) cannot be patched here")
        raise _malformed(f"{node.type_code} is a primitive type and has no element '{name}'")
    if node.type_code not in get_facts().types:
        raise _inapplicable(f"{node.member or 'the resource'} is of unknown type {node.type_code!r}")
    found = _elements(node.type_code).get(name)
    if found is None:
        if _is_polymorphic(node):
            return []
        raise _malformed(f"{node.type_code} has no element '{name}'")
    element, members = found
    out: list[_Node] = []
    container = node.value
    for json_name, type_code in members:
        value = container.get(json_name)
        if isinstance(value, list):
            out.extend(
                _Node(item, _concrete_type(type_code, item), element, container, json_name, i)
                for i, item in enumerate(value)
                if item is not None  # a null kept only to align with a _member array of extensions
            )
        elif value is not None:
            out.append(_Node(value, _concrete_type(type_code, value), element, container, json_name, None))
    return out


def _navigate(nodes: list[_Node], steps: tuple[_Step, ...]) -> list[_Node]:
    for step in steps:
        nodes = _step(nodes, step)
    return nodes


def _step(nodes: list[_Node], step: _Step) -> list[_Node]:
    if isinstance(step, _Member):
        return [child for node in nodes for child in _children(node, step.name)]
    if isinstance(step, _Index):
        return nodes[step.index : step.index + 1]
    if isinstance(step, _Where):
        return [node for node in nodes if _criterion(step.criteria, node) is True]
    if isinstance(step, _OfType):
        _check_type_name(step.type_name)
        return [node for node in nodes if node.type_code == step.type_name]
    if step.name == "first":
        return nodes[:1]
    if step.name == "last":
        return nodes[-1:]
    raise _malformed(f"{_UNSUPPORTED}: {step.name}() cannot select elements")


def _check_type_name(name: str) -> None:
    facts = get_facts()
    if name not in facts.types and name not in facts.primitives:
        raise _malformed(f"{_UNSUPPORTED}: ofType({name}) names no FHIR type")


def _root(doc: dict[str, Any]) -> _Node:
    resource_type = doc.get("resourceType")
    types = get_facts().types
    if not isinstance(resource_type, str) or resource_type not in types or types[resource_type].kind != "resource":
        raise _inapplicable(f"the resource has no known resourceType ({resource_type!r})")
    return _Node(doc, resource_type, None, None, "", None)


def _start(doc: dict[str, Any], path: _Path) -> list[_Node]:
    root = _root(doc)
    if path.root is None or path.root in (root.type_code, "Resource", "DomainResource"):
        return [root]
    typedef = get_facts().types.get(path.root)
    if typedef is not None and typedef.kind == "resource":
        raise _inapplicable(f"the path starts at {path.root} but the resource is a {root.type_code}")
    raise _malformed(f"{_UNSUPPORTED} {path.text!r}: {path.root} is not a resource type")


def _select(doc: dict[str, Any], path: _Path) -> list[_Node]:
    return _navigate(_start(doc, path), path.steps)


# --- where() criteria: FHIRPath's three-valued logic, None standing for the empty collection ----


def _criterion(criterion: _Criterion, node: _Node) -> bool | None:
    if isinstance(criterion, _Or):
        left, right = _criterion(criterion.left, node), _criterion(criterion.right, node)
        if left is True or right is True:
            return True
        return False if left is False and right is False else None
    if isinstance(criterion, _And):
        left, right = _criterion(criterion.left, node), _criterion(criterion.right, node)
        if left is False or right is False:
            return False
        return True if left is True and right is True else None
    if isinstance(criterion, _Not):
        inner = _criterion(criterion.operand, node)
        return None if inner is None else not inner
    found = _navigate([node], criterion.steps)
    if isinstance(criterion, _Exists):
        return bool(found) != criterion.empty
    if isinstance(criterion, _Compare):
        if not found:
            return None
        # FHIRPath '=' on collections compares them item by item, so several values never equal one literal.
        equal = len(found) == 1 and _equals(found[0].value, criterion.literal)
        return equal != criterion.negate
    return _singleton_boolean(found)


def _singleton_boolean(found: list[_Node]) -> bool | None:
    if not found:
        return None
    if len(found) > 1:
        raise _inapplicable(f"a where() criterion found {len(found)} values where one boolean was expected")
    value = found[0].value
    # FHIRPath singleton evaluation: a lone non-boolean item counts as true.
    return value if isinstance(value, bool) else True


def _equals(value: Any, literal: _Literal) -> bool:
    if isinstance(literal, bool):
        return isinstance(value, bool) and value == literal
    if isinstance(literal, str):
        return isinstance(value, str) and not isinstance(value, JsonDecimal) and str.__eq__(value, literal)
    number = number_value(value)
    return number is not None and number == literal


# ================================================================================================
# The Parameters document
# ================================================================================================

_REQUIRED_PARTS = {
    "add": ("path", "name", "value"),
    "insert": ("path", "value", "index"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}
_PART_NAMES = ("type", "path", "name", "value", "index", "source", "destination")
_INTEGER_KEYS = ("valueInteger", "valueUnsignedInt", "valuePositiveInt")


@dataclass(frozen=True, slots=True)
class _Operation:
    position: int
    type: str
    path: _Path
    name: str | None
    value: dict[str, Any] | None  # the 'value' part itself: value[x], nested parts or a resource
    index: int | None
    source: int | None
    destination: int | None

    def label(self) -> str:
        return f"FHIRPath Patch operation {self.position} ({self.type} at {self.path.text!r})"


def _operations(parameters: Any) -> list[_Operation]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise FhirError(400, "A FHIRPath Patch must be a Parameters resource", code="invalid")
    entries = parameters.get("parameter", [])
    if not isinstance(entries, list):
        raise FhirError(400, "FHIRPath Patch: Parameters.parameter must be an array", code="invalid")
    operations: list[_Operation] = []
    for position, entry in enumerate(entries):
        try:
            operations.append(_operation(position, entry))
        except _Failure as failure:
            raise _error(failure, f"FHIRPath Patch operation {position}", position) from None
    return operations


def _operation(position: int, entry: Any) -> _Operation:
    if not isinstance(entry, dict):
        raise _malformed("a parameter must be a JSON object")
    if entry.get("name") != "operation":
        raise _malformed(f"the parameter is named {entry.get('name')!r}; FHIRPath Patch parameters are all 'operation'")
    parts = _parts_by_name(entry.get("part"))
    if "type" not in parts:
        raise _malformed("the operation has no 'type' part")
    kind = _primitive_part(parts, "type", ("valueCode", "valueString"), str)
    if kind not in _REQUIRED_PARTS:
        raise _malformed(f"unknown operation type {kind!r}; expected one of {', '.join(_REQUIRED_PARTS)}")
    missing = [name for name in _REQUIRED_PARTS[kind] if name not in parts]
    if missing:
        raise _malformed(f"'{kind}' needs the part(s) {', '.join(missing)}")
    return _Operation(
        position=position,
        type=kind,
        path=_parse_path(_primitive_part(parts, "path", ("valueString",), str)),
        name=_primitive_part(parts, "name", ("valueString",), str) if kind == "add" else None,
        value=parts.get("value") if kind in ("add", "insert", "replace") else None,
        index=_integer_part(parts, "index") if kind == "insert" else None,
        source=_integer_part(parts, "source") if kind == "move" else None,
        destination=_integer_part(parts, "destination") if kind == "move" else None,
    )


def _parts_by_name(parts: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(parts, list) or not parts:
        raise _malformed("the operation has no parts")
    by_name: dict[str, dict[str, Any]] = {}
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise _malformed("every part of an operation needs a name")
        name = part["name"]
        if name not in _PART_NAMES:
            raise _malformed(f"unknown part {name!r}; expected {', '.join(_PART_NAMES)}")
        if name in by_name:
            raise _malformed(f"the part {name!r} appears more than once")
        by_name[name] = part
    return by_name


def _primitive_part(parts: dict[str, dict[str, Any]], name: str, keys: tuple[str, ...], kind: type) -> Any:
    part = parts[name]
    present = [key for key in keys if key in part]
    if len(present) != 1:
        raise _malformed(f"the part {name!r} needs {' or '.join(keys)}")
    value = part[present[0]]
    # bool is an int in Python; JsonDecimal is a str: neither is what the part asks for.
    if not isinstance(value, kind) or isinstance(value, bool | JsonDecimal):
        raise _malformed(f"the part {name!r} has a {type(value).__name__} where a {kind.__name__} belongs")
    return value


def _integer_part(parts: dict[str, dict[str, Any]], name: str) -> int:
    value: int = _primitive_part(parts, name, _INTEGER_KEYS, int)
    if value < 0:
        raise _malformed(f"the part {name!r} must not be negative ({value})")
    return value


# ================================================================================================
# Applying operations
# ================================================================================================


def apply_fhirpath_patch(resource: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Apply a FHIRPath Patch Parameters resource to a copy of ``resource`` and return the copy.

    The whole document is checked before anything is applied, so a malformed operation is a 400 even
    when an earlier one would not apply; the first failure raises ``FhirError``.
    """
    operations = _operations(parameters)
    doc = clone(resource)
    for operation in operations:
        try:
            _APPLY[operation.type](doc, operation)
        except _Failure as failure:
            raise _error(failure, operation.label(), operation.position) from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            # A resource shaped in a way no check foresaw must still give an OperationOutcome, not a 500.
            raise _error(_inapplicable(f"cannot be applied ({exc!r})"), operation.label(),
                         operation.position) from None
    return doc


def _error(failure: _Failure, label: str, position: int) -> FhirError:
    issue = OutcomeIssue("error", failure.code, f"{label}: {failure.reason}", (f"Parameters.parameter[{position}]",))
    return FhirError(failure.status, [issue])


def _single(nodes: list[_Node], operation: _Operation) -> _Node:
    if not nodes:
        raise _inapplicable("the path selects no element")
    if len(nodes) > 1:
        needs = "at most one" if operation.type == "delete" else "exactly one"
        raise _inapplicable(f"the path selects {len(nodes)} elements; {operation.type} needs {needs}")
    return nodes[0]


def _add(doc: dict[str, Any], operation: _Operation) -> None:
    target = _single(_select(doc, operation.path), operation)
    name = operation.name or ""
    if not isinstance(target.value, dict):
        raise _Failure(422, "not-supported", f"the path selects a primitive {target.type_code}; adding "
                       "extensions or ids to primitives is not supported")
    found = _elements(target.type_code).get(name)
    if found is None:
        raise _malformed(f"{target.type_code} has no element '{name}'")
    element, allowed = found
    json_name, value = _build_value(_value_part(operation), element, allowed, "value")
    _refuse_primitive_extensions(target.value, json_name)
    if element.definition.is_array:
        existing = target.value.setdefault(json_name, [])
        if not isinstance(existing, list):
            raise _inapplicable(f"{json_name} holds a {type(existing).__name__}, not an array")
        existing.append(value)
        return
    present = [member for member, _ in element.members if member in target.value]
    if present:
        raise _inapplicable(f"{target.type_code}.{element.definition.name} already has a value ({present[0]}) "
                            "and does not repeat; use replace")
    target.value[json_name] = value


def _insert(doc: dict[str, Any], operation: _Operation) -> None:
    holder, element, json_name, items = _list_at(doc, operation)
    index = _index(operation.index, "index")
    if index > len(items):
        raise _inapplicable(f"index {index} is past the end of the list ({len(items)} elements)")
    _, value = _build_value(_value_part(operation), element, element.members, "value")
    items.insert(index, value)
    holder[json_name] = items


def _move(doc: dict[str, Any], operation: _Operation) -> None:
    _, _, _, items = _list_at(doc, operation)
    source, destination = _index(operation.source, "source"), _index(operation.destination, "destination")
    for name, index in (("source", source), ("destination", destination)):
        if index >= len(items):
            raise _inapplicable(f"{name} index {index} is out of range (the list has {len(items)} elements)")
    items.insert(destination, items.pop(source))


def _index(value: int | None, part: str) -> int:
    if value is None:  # _operation requires the part for this operation type; kept for the type checker
        raise _malformed(f"the part {part!r} is missing")
    return value


def _delete(doc: dict[str, Any], operation: _Operation) -> None:
    nodes = _select(doc, operation.path)
    if not nodes:
        return  # the spec: delete the element "if found"
    node = _single(nodes, operation)
    if node.parent is None:
        raise _malformed("the path selects the resource itself, which cannot be deleted")
    _refuse_primitive_extensions(node.parent, node.member)
    if node.index is None:
        del node.parent[node.member]
        return
    items = node.parent[node.member]
    del items[node.index]
    if not items:
        del node.parent[node.member]  # FHIR JSON has no empty arrays


def _replace(doc: dict[str, Any], operation: _Operation) -> None:
    node = _single(_select(doc, operation.path), operation)
    if node.parent is None or node.element is None:
        raise _malformed("the path selects the resource itself, which cannot be replaced")
    _refuse_primitive_extensions(node.parent, node.member)
    json_name, value = _build_value(_value_part(operation), node.element, node.element.members, "value")
    if node.index is not None:
        node.parent[node.member][node.index] = value
    elif json_name == node.member:
        node.parent[node.member] = value
    else:
        _rename_member(node.parent, node.member, json_name, value)


def _rename_member(obj: dict[str, Any], old: str, new: str, value: Any) -> None:
    """A choice element changing type (valueQuantity -> valueString), kept where it was among its siblings."""
    entries = list(obj.items())
    obj.clear()
    obj.update((new, value) if key == old else (key, item) for key, item in entries)


_APPLY = {"add": _add, "insert": _insert, "delete": _delete, "replace": _replace, "move": _move}


def _list_at(doc: dict[str, Any], operation: _Operation) -> tuple[dict[str, Any], _Element, str, list[Any]]:
    """For insert and move: the object holding the list the path names, the element, its JSON name and
    the list itself (a new empty one when the object has none yet)."""
    path = operation.path
    last = path.steps[-1] if path.steps else None
    if not isinstance(last, _Member):
        raise _malformed(f"{operation.type} needs a path that ends with the name of a repeating element, "
                         "such as Patient.identifier")
    holders = _navigate(_start(doc, path), path.steps[:-1])
    if not holders:
        raise _inapplicable(f"no element holds the list '{last.name}'")
    if len(holders) > 1:
        raise _inapplicable(f"the path selects the '{last.name}' lists of {len(holders)} elements; "
                            f"{operation.type} needs exactly one list")
    holder = holders[0]
    if not isinstance(holder.value, dict):
        raise _malformed(f"{holder.type_code} is a primitive type and has no element '{last.name}'")
    found = _elements(holder.type_code).get(last.name)
    if found is None:
        raise _malformed(f"{holder.type_code} has no element '{last.name}'")
    element = found[0]
    if not element.definition.is_array:
        raise _malformed(f"{holder.type_code}.{last.name} is not a repeating element")
    json_name = element.members[0][0]  # a repeating element is never a choice
    _refuse_primitive_extensions(holder.value, json_name)
    items = holder.value.get(json_name, [])
    if not isinstance(items, list):
        raise _inapplicable(f"{json_name} holds a {type(items).__name__}, not an array")
    return holder.value, element, json_name, items


def _refuse_primitive_extensions(obj: dict[str, Any], json_name: str) -> None:
    # Changing a primitive while leaving its _member (ids, extensions) behind would misalign or orphan them.
    if "_" + json_name in obj:
        raise _Failure(422, "not-supported", f"'{json_name}' has primitive extensions ('_{json_name}'), "
                       "which FHIRPath Patch is not supported for")


# ================================================================================================
# Values: value[x], nested parts, resources
# ================================================================================================

# Quantity and its R4 profiles share one JSON shape.
_QUANTITIES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration"})


def _value_part(operation: _Operation) -> dict[str, Any]:
    if operation.value is None:
        raise _malformed(f"'{operation.type}' needs a 'value' part")
    return operation.value


def _build_value(part: dict[str, Any], element: _Element, allowed: tuple[tuple[str, str], ...],
                 where: str) -> tuple[str, Any]:
    """The JSON member name and JSON value that ``part`` gives for ``element``, limited to ``allowed`` members."""
    form = _value_form(part, where)
    if form == "part":
        return _from_parts(part["part"], element, allowed, where)
    if form == "resource":
        return _from_resource(part["resource"], element, allowed, where)
    value_type = _value_type(form[len("value"):], where)
    raw = part[form]
    _check_json_kind(raw, value_type, form, where)
    json_name, type_code = _fit(value_type, element, allowed, where)
    if isinstance(raw, float) and type_code in get_facts().primitives:
        return json_name, JsonDecimal(repr(raw))  # a float from a plain JSON parser; decimals are kept as text
    return json_name, clone(raw)


def _value_form(part: dict[str, Any], where: str) -> str:
    if any(key.startswith("_value") for key in part):
        raise _Failure(400, "not-supported", f"{where}: extensions on a primitive value are not supported")
    forms = [key for key in part if key.startswith("value") or key in ("part", "resource")]
    if len(forms) != 1:
        raise _malformed(f"{where}: needs exactly one of value[x], part or resource"
                         + (f", not {', '.join(forms)}" if forms else ""))
    return forms[0]


def _value_type(suffix: str, where: str) -> str:
    facts = get_facts()
    primitive = suffix[:1].lower() + suffix[1:]
    if primitive in facts.primitives:
        return primitive
    typedef = facts.types.get(suffix)
    if typedef is None or typedef.kind != "complex-type":
        raise _malformed(f"{where}: value{suffix} is not a FHIR data type")
    return suffix


_JSON_KIND_CHECKS = {
    "string": lambda v: isinstance(v, str) and not isinstance(v, JsonDecimal),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "decimal": lambda v: isinstance(v, int | float | JsonDecimal) and not isinstance(v, bool),
}


def _json_kind(type_code: str) -> str | None:
    primitive = get_facts().primitives.get(type_code)
    return primitive.json_kind if primitive is not None else None


def _check_json_kind(raw: Any, value_type: str, key: str, where: str) -> None:
    kind = _json_kind(value_type)
    ok = isinstance(raw, dict) if kind is None else _JSON_KIND_CHECKS[kind](raw)
    if not ok:
        raise _malformed(f"{where}: {key} must be a JSON {kind or 'object'}, not {type(raw).__name__}")


def _fit(value_type: str, element: _Element, allowed: tuple[tuple[str, str], ...], where: str) -> tuple[str, str]:
    """The member a ``value_type`` value goes into: the same type, or, for an element of one type, one
    written the same way in JSON (valueString into a code, valueInteger into a decimal, Age into Quantity)."""
    for json_name, type_code in allowed:
        if type_code == value_type:
            return json_name, type_code
    for json_name, type_code in allowed:
        if value_type in _QUANTITIES and type_code in _QUANTITIES:
            return json_name, type_code
    if len(allowed) == 1 and not element.definition.choice:
        json_name, type_code = allowed[0]
        value_kind, target_kind = _json_kind(value_type), _json_kind(type_code)
        if value_kind is not None and (value_kind == target_kind or (value_kind, target_kind) == ("integer", "decimal")):
            return json_name, type_code
    expected = "|".join(type_code for _, type_code in allowed)
    raise _malformed(f"{where}: a {value_type} value does not fit {element.definition.name}, which takes {expected}")


def _from_parts(parts: Any, element: _Element, allowed: tuple[tuple[str, str], ...],
                where: str) -> tuple[str, dict[str, Any]]:
    if len(allowed) != 1:
        raise _malformed(f"{where}: {element.definition.name} can hold several types; give a typed value[x] "
                         "rather than parts")
    json_name, type_code = allowed[0]
    facts = get_facts()
    if type_code in facts.primitives:
        raise _malformed(f"{where}: {element.definition.name} is a primitive ({type_code}); give a value[x], "
                         "not parts")
    if type_code not in facts.types:
        raise _malformed(f"{where}: {element.definition.name} holds a {type_code}; give it as a resource, "
                         "not parts")
    return json_name, _object_from_parts(parts, type_code, where)


def _object_from_parts(parts: Any, type_code: str, where: str) -> dict[str, Any]:
    if not isinstance(parts, list) or not parts:
        raise _malformed(f"{where}: 'part' must be a non-empty array")
    obj: dict[str, Any] = {}
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise _malformed(f"{where}: every part needs a name")
        name = part["name"]
        here = f"{where}.{name}"
        found = _elements(type_code).get(name)
        if found is None:
            raise _malformed(f"{here}: {type_code} has no element '{name}'")
        element, allowed = found
        json_name, value = _build_value(part, element, allowed, here)
        if element.definition.is_array:
            obj.setdefault(json_name, []).append(value)
        elif any(member in obj for member, _ in element.members):
            raise _malformed(f"{here}: {type_code}.{element.definition.name} does not repeat")
        else:
            obj[json_name] = value
    return obj


def _from_resource(resource: Any, element: _Element, allowed: tuple[tuple[str, str], ...],
                   where: str) -> tuple[str, dict[str, Any]]:
    holders = [json_name for json_name, type_code in allowed if type_code == "Resource"]
    if not holders:
        raise _malformed(f"{where}: {element.definition.name} does not hold a resource")
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise _malformed(f"{where}: 'resource' must be a resource with a resourceType")
    return holders[0], clone(resource)


