"""Structural validation of FHIR R4 JSON resources (json.html, datatypes.html, narrative.html).

This closes the gaps the fhir.resources R4B models leave open: JSON kinds of primitives (``"true"`` is
not a boolean, ``"1.5"`` is not a decimal), empty objects/arrays/strings, ``null`` in arrays, unknown
members, cardinality, choice exclusivity, required bindings, ele-1, ext-1, narrative XHTML and the
contained-resource rules dom-1..dom-5.

It runs on every create/update, so per-type tables are compiled once (lazily, per type) from
``facts`` and the walk builds no strings unless it finds an issue: a path is a chain of
``(parent, segment, index)`` tuples, joined into a FHIRPath expression only when an issue is reported.
"""

from __future__ import annotations

import calendar
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from fhir_server.model.facts import Facts, PrimitiveDef, TypeDef, get_facts
from fhir_server.model.jsonio import JsonDecimal

__all__ = ["Issue", "Validator", "validate_resource"]


@dataclass(frozen=True, slots=True)
class Issue:
    severity: str  # "error" | "warning" | "information"
    code: str  # OperationOutcome IssueType code: "structure", "required", "value", "code-invalid", ...
    expression: str  # FHIRPath of the element; "" when the input has no usable resource type
    diagnostics: str  # human-readable, names the element and what is wrong


# (parent, segment, index); index -1 means "not an array item"; the root's parent is None.
_Path = tuple[Any, str, int]
# A primitive check returns None when the value is fine, else (issue code, message).
_Check = Callable[[Any], "tuple[str, str] | None"]

_K_COMPLEX = 0
_K_STRING = 1  # string/markdown: only "not empty, not all whitespace"; no regex on the hot path
_K_PRIM = 2
_K_RESOURCE = 3

_INT_MAX = 2**31 - 1
_INT_MIN = -(2**31)
_XHTML_NS = "http://www.w3.org/1999/xhtml"
_ABSENT = object()


def path_expression(path: _Path | None) -> str:
    """The FHIRPath of a walk position (a linked list of (parent, member, index)), e.g. Patient.name[0]."""
    parts: list[str] = []
    while path is not None:
        parent, seg, idx = path
        parts.append(seg if idx < 0 else f"{seg}[{idx}]")
        path = parent
    return ".".join(reversed(parts))


def _err(issues: list[Issue], code: str, path: _Path | None, msg: str) -> None:
    issues.append(Issue("error", code, path_expression(path), msg))


def _short(s: str) -> str:
    return repr(s if len(s) <= 60 else s[:57] + "...")


def _describe(v: object) -> str:
    if v is None:
        return "null"
    if type(v) is bool:
        return "a boolean (" + ("true" if v else "false") + ")"
    if type(v) is int or type(v) is float:
        return f"a number ({v})"
    if type(v) is JsonDecimal:
        return f"a number ({str.__str__(v)})"
    if isinstance(v, str):
        return f"a string ({_short(v)})"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an array"
    return f"a {type(v).__name__}"


# ---------------------------------------------------------------------------------------------
# Primitive checks. Wrong JSON kinds are "structure" issues, well-typed but bad values "value".


def _check_boolean(v: Any) -> tuple[str, str] | None:
    if type(v) is bool:
        return None
    return "structure", f"must be a JSON boolean (true or false), found {_describe(v)}"


_BIG_INT = re.compile(r"-?[0-9]+")


def _int_check(type_name: str, lo: int) -> _Check:
    def check(v: Any) -> tuple[str, str] | None:
        if type(v) is int:  # not isinstance: bool is an int subclass
            if lo <= v <= _INT_MAX:
                return None
            return "value", f"value {v} is out of range for {type_name} ({lo}..{_INT_MAX})"
        if type(v) is JsonDecimal and _BIG_INT.fullmatch(v):  # jsonio keeps >= 19-digit integers verbatim
            return "value", f"value {str.__str__(v)} is out of range for {type_name} ({lo}..{_INT_MAX})"
        return "structure", f"must be a JSON integer ({type_name}), found {_describe(v)}"

    return check


def _decimal_check(regex: re.Pattern[str]) -> _Check:
    match = regex.fullmatch

    def check(v: Any) -> tuple[str, str] | None:
        t = type(v)
        if t is int:
            return None
        if t is JsonDecimal:
            return None if match(v) else ("value", f"{_short(v)} is not a valid decimal")
        if t is float and math.isfinite(v):  # input parsed with the plain json module
            return None
        return "structure", f"must be a JSON number (decimal), found {_describe(v)}"

    return check


def _string_problem(v: Any, type_name: str) -> tuple[str, str] | None:
    # json.html: a string is either absent or has at least one non-whitespace character.
    if type(v) is not str:
        return "structure", f"must be a JSON string ({type_name}), found {_describe(v)}"
    if not v:
        return "value", "must not be an empty string"
    if v.isspace():
        return "value", "must not be only whitespace"
    return None


def _plain_string_check(type_name: str) -> _Check:
    def check(v: Any) -> tuple[str, str] | None:
        if type(v) is str and v and not v.isspace():
            return None
        return _string_problem(v, type_name)

    return check


def _regex_check(type_name: str, regex: re.Pattern[str]) -> _Check:
    match = regex.fullmatch

    def check(v: Any) -> tuple[str, str] | None:
        if type(v) is str and v and match(v) and not v.isspace():
            return None
        return _string_problem(v, type_name) or ("value", f"{_short(v)} is not a valid {type_name}")

    return check


def _calendar_ok(v: str) -> bool:
    # The regex already bounds the day to 01..31; only days after the 28th need the calendar.
    if len(v) >= 10 and v[8:10] > "28":
        return int(v[8:10]) <= calendar.monthrange(int(v[0:4]), int(v[5:7]))[1]
    return True


def _date_check(type_name: str, regex: re.Pattern[str]) -> _Check:
    match = regex.fullmatch

    def check(v: Any) -> tuple[str, str] | None:
        if type(v) is str and match(v):
            if _calendar_ok(v):
                return None
            return "value", f"{_short(v)} is not a valid {type_name}: that month has no such day"
        return _string_problem(v, type_name) or ("value", f"{_short(v)} is not a valid {type_name}")

    return check


_B64_CHARS = re.compile(r"[0-9a-zA-Z+/=]+")


def _check_base64(v: Any) -> tuple[str, str] | None:
    # The spec's regex backtracks badly on large attachments; this applies its alphabet and its
    # groups of four to the value with whitespace removed, in linear time.
    if type(v) is str and v:
        s = "".join(v.split()) if (" " in v or "\n" in v or "\r" in v or "\t" in v) else v
        if s and len(s) % 4 == 0 and _B64_CHARS.fullmatch(s):
            return None
        if s:
            return "value", "is not valid base64 (A-Z a-z 0-9 + / =, a multiple of 4 characters)"
    return _string_problem(v, "base64Binary")


# ---------------------------------------------------------------------------------------------
# Narrative XHTML: narrative.html allows a <div> in the XHTML namespace holding basic HTML only.
# The element and attribute lists are those of the HL7 Java validator (txt-1).

_HTML_ELEMENTS = frozenset(
    ("p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i", "strong", "small",
     "big", "tt", "dfn", "q", "var", "abbr", "acronym", "cite", "blockquote", "hr", "address", "bdo", "kbd",
     "sub", "sup", "ul", "ol", "li", "dl", "dt", "dd", "pre", "table", "caption", "colgroup", "col", "thead",
     "tr", "tfoot", "tbody", "th", "td", "code", "samp", "img", "map", "area")
)  # fmt: skip
_HTML_ATTRS = frozenset(
    ("title", "style", "class", "id", "lang", "dir", "accesskey", "tabindex", "span", "width", "align",
     "valign", "char", "charoff", "abbr", "axis", "headers", "scope", "rowspan", "colspan")
)  # fmt: skip
_HTML_ELEMENT_ATTRS = frozenset(
    ("a.href", "a.name", "a.charset", "a.type", "a.hreflang", "a.rel", "a.rev", "a.shape", "a.coords",
     "img.src", "img.border", "img.alt", "img.longdesc", "img.height", "img.width", "img.usemap", "img.ismap",
     "blockquote.cite", "q.cite", "map.name", "area.shape", "area.coords", "area.href", "area.nohref",
     "area.alt", "table.summary", "table.width", "table.border", "table.frame", "table.rules",
     "table.cellspacing", "table.cellpadding")
)  # fmt: skip
_XML_NS_ATTRS = frozenset(
    ("{http://www.w3.org/XML/1998/namespace}lang", "{http://www.w3.org/XML/1998/namespace}space")
)
_XHTML_PREFIX = "{" + _XHTML_NS + "}"
# A DOCTYPE/ENTITY declaration (comments and CDATA are fine); refused before lxml sees it.
_MARKUP_DECL = re.compile(r"<!(?!--|\[CDATA\[)")

# lxml parser objects must not be shared between threads (FastAPI runs sync handlers in a pool).
_parsers = threading.local()


def _xml_parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        _parsers.parser = parser
    return parser


def _has_text(s: str | None) -> bool:
    return bool(s and not s.isspace())


def _xhtml_problems(v: str) -> list[str]:
    if not v.startswith("<div"):
        return ["must be an XHTML <div> element (the string must begin with '<div')"]
    if _MARKUP_DECL.search(v):
        return ["must not contain a DOCTYPE or other markup declaration"]
    try:
        root = etree.fromstring(v, _xml_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        # HTML entities such as &nbsp; land here too: narrative.html requires Unicode characters.
        return [f"is not well-formed XHTML: {exc}"]
    problems: list[str] = []
    if root.tag != _XHTML_PREFIX + "div":
        problems.append(f'the root must be a <div> in the XHTML namespace (xmlns="{_XHTML_NS}")')
    has_content = _has_text(root.text)
    for el in root.iter():
        tag = el.tag
        if el is not root and _has_text(el.tail):
            has_content = True
        if not isinstance(tag, str):  # comment or processing instruction
            continue
        if el is not root and _has_text(el.text):
            has_content = True
        if not tag.startswith(_XHTML_PREFIX):
            problems.append(f"element {tag} is not in the XHTML namespace")
            continue
        name = tag[len(_XHTML_PREFIX) :]
        if name == "img":
            has_content = True
        if name == "script":
            problems.append("must not contain <script>")
        elif name not in _HTML_ELEMENTS:
            problems.append(f"element <{name}> is not allowed in a narrative")
        for attr in el.attrib:
            attr = str(attr)
            if attr in _XML_NS_ATTRS:
                continue
            if attr.lower().startswith("on"):
                problems.append(f"event attribute {attr!r} on <{name}> is not allowed")
            elif attr not in _HTML_ATTRS and f"{name}.{attr}" not in _HTML_ELEMENT_ATTRS:
                problems.append(f"attribute {attr!r} on <{name}> is not allowed in a narrative")
    if not has_content:
        problems.append("must have some non-whitespace content (txt-2)")
    return list(dict.fromkeys(problems))


def _check_xhtml(v: Any) -> tuple[str, str] | None:
    if type(v) is not str:
        return "structure", f"must be a JSON string (xhtml), found {_describe(v)}"
    problems = _xhtml_problems(v)
    return ("value", "; ".join(problems)) if problems else None


# ---------------------------------------------------------------------------------------------
# Compiled tables


class _Member:
    """One JSON member name of a type, with everything the walk needs precomputed."""

    __slots__ = (
        "key",
        "expr",
        "base",
        "kind",
        "array",
        "max",
        "choice",
        "tcode",
        "ctype",
        "check",
        "prim",
        "vs_url",
        "vs",
    )

    def __init__(
        self,
        key: str,
        expr: str,
        base: str,
        kind: int,
        array: bool,
        max_: int,
        choice: bool,
        tcode: str,
        check: _Check | None,
        prim: bool,
    ) -> None:
        self.key = key
        self.expr = expr  # FHIRPath segment: the member name, or "value.ofType(Quantity)"
        self.base = base  # element name without the choice suffix
        self.kind = kind
        self.array = array
        self.max = max_
        self.choice = choice
        self.tcode = tcode
        self.ctype: _Type | None = None  # compiled on first use
        self.check = check
        self.prim = prim  # a primitive that may have a '_' companion
        self.vs_url: str | None = None
        self.vs: dict[str, frozenset[str]] | None = None  # required binding on Coding / CodeableConcept


class _Type:
    __slots__ = ("name", "members", "required", "is_resource", "is_extension", "ele1")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[str, _Member] = {}
        # (element name, JSON names of which one must be present) for every element with min >= 1
        self.required: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self.is_resource = False
        self.is_extension = False
        self.ele1 = True  # an object holding nothing but "id" violates ele-1


class Validator:
    """Validates resources against one ``Facts``; ``validate_resource`` uses a shared instance."""

    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self._types: dict[str, _Type] = {}
        self._checks: dict[str, _Check] = {}
        self._r4_resources = frozenset(facts.r4_resource_types)

    # -- compilation -------------------------------------------------------------------------

    def _type(self, name: str) -> _Type:
        t = self._types.get(name)
        if t is None:
            # Compiling twice in a race yields equal tables; the dict assignment is atomic.
            t = self._types[name] = self._compile(self.facts.types[name])
        return t

    def _prim_check(self, name: str) -> _Check:
        check = self._checks.get(name)
        if check is None:
            check = self._checks[name] = _make_prim_check(self.facts.primitives[name])
        return check

    def _compile(self, td: TypeDef) -> _Type:
        facts = self.facts
        t = _Type(td.name)
        t.is_resource = td.kind == "resource"
        t.is_extension = td.name == "Extension"
        t.ele1 = td.kind in ("complex-type", "backbone")
        for key, (el, tcode) in td.members.items():
            check: _Check | None = None
            if tcode in facts.primitives:
                kind = _K_STRING if tcode in ("string", "markdown") else _K_PRIM
                check = self._prim_check(tcode)
            elif tcode == "Resource":
                kind = _K_RESOURCE
            else:
                kind = _K_COMPLEX
            expr = f"{el.name}.ofType({tcode})" if el.choice else key
            # xhtml allows no extensions (its 'extension' has max 0), so no '_div' companion.
            prim = kind != _K_COMPLEX and kind != _K_RESOURCE and tcode != "xhtml"
            m = _Member(key, expr, el.name, kind, el.is_array, el.max, el.choice, tcode, check, prim)
            vs = facts.valuesets.get(el.binding) if el.binding else None
            if vs is not None and el.binding is not None:
                m.vs_url = el.binding
                if tcode == "code":
                    codes = frozenset().union(*vs.values())
                    m.check = _bound_code_check(self._prim_check("code"), codes, el.binding)
                elif tcode in ("Coding", "CodeableConcept"):
                    m.vs = vs
            t.members[key] = m
        required: list[tuple[str, tuple[str, ...]]] = []
        for el in td.elements:
            if el.min >= 1:
                names = [k for k, (e, _) in td.members.items() if e is el]
                names += ["_" + k for k in names if t.members[k].prim]
                required.append((el.name, tuple(names)))
        t.required = tuple(required)
        return t

    # -- validation --------------------------------------------------------------------------

    def validate(self, resource: object, expected_type: str | None = None) -> list[Issue]:
        issues: list[Issue] = []
        try:
            self._root(resource, expected_type, issues)
        except RecursionError:
            issues.append(Issue("error", "structure", "", "the resource is nested too deeply to validate"))
        except Exception as exc:  # never raise on client input; report what could not be checked
            issues.append(Issue("error", "exception", "", f"validation failed: {type(exc).__name__}: {exc}"))
        return issues

    def _root(self, resource: object, expected_type: str | None, issues: list[Issue]) -> None:
        if type(resource) is not dict:
            _err(issues, "structure", None, f"a resource must be a JSON object, found {_describe(resource)}")
            return
        rt = resource.get("resourceType")
        rt_name: str = rt if type(rt) is str and rt in self._r4_resources else ""
        if expected_type is not None and rt != expected_type:
            found = repr(rt) if type(rt) is str else _describe(rt)
            msg = f"resourceType {found} does not match the expected type {expected_type!r}"
            issues.append(Issue("error", "invalid", rt_name, msg))
        if rt_name and rt_name not in self.facts.resource_types:
            msg = f"resource type {rt_name!r} is not supported by this server"
            issues.append(Issue("error", "not-supported", rt_name, msg))
            return
        self._resource(resource, None, "", -1, False, issues)

    def _resource(
        self,
        obj: dict[str, Any],
        parent: _Path | None,
        seg: str,
        idx: int,
        contained: bool,
        issues: list[Issue],
    ) -> None:
        rt = obj.get("resourceType")
        here = (parent, seg, idx) if parent is not None else None
        if rt is None:
            _err(issues, "required", here, "a resource must have a 'resourceType'")
            return
        if type(rt) is not str:
            _err(issues, "structure", here, f"'resourceType' must be a string, found {_describe(rt)}")
            return
        if rt not in self._r4_resources:
            _err(issues, "invalid", here, f"unknown resourceType {_short(rt)}")
            return
        path: _Path = here if here is not None else (None, rt, -1)
        self._object(obj, self._type(rt), path, issues)
        if contained:
            self._contained_rules(obj, path, issues)
        else:
            if type(obj.get("contained")) is list:
                self._dom3(obj, path, issues)
            self._ref1(obj, path, issues)

    def _contained_rules(self, obj: dict[str, Any], path: _Path, issues: list[Issue]) -> None:
        if "contained" in obj:
            _err(
                issues,
                "invariant",
                (path, "contained", -1),
                "dom-2: a contained resource must not contain resources",
            )
        if "text" in obj:
            _err(
                issues,
                "invariant",
                (path, "text", -1),
                "dom-1: a contained resource must not have a narrative",
            )
        meta = obj.get("meta")
        if type(meta) is dict:
            for name in ("versionId", "lastUpdated"):
                if name in meta:
                    msg = f"dom-4: a contained resource must not have meta.{name}"
                    _err(issues, "invariant", ((path, "meta", -1), name, -1), msg)
            if "security" in meta:
                msg = "dom-5: a contained resource must not have a security label"
                _err(issues, "invariant", ((path, "meta", -1), "security", -1), msg)

    def _dom3(self, obj: dict[str, Any], path: _Path, issues: list[Issue]) -> None:
        # dom-3: each contained resource is referenced ('#id') from the container or from another
        # contained resource, or itself references the container ('#'). Any '#...' string counts as
        # a reference (canonicals and uris count in the spec too); over-accepting costs nothing here.
        refs: set[str] = set()
        _collect_local_refs(obj, refs, True, "")
        contained = obj["contained"]
        own: list[set[str]] = []
        for item in contained:
            s: set[str] = set()
            if type(item) is dict:
                _collect_local_refs(item, s, False, "")
            own.append(s)
            refs |= s
        for i, item in enumerate(contained):
            cid = item.get("id") if type(item) is dict else None
            if type(cid) is str and "#" + cid not in refs and "#" not in own[i]:
                msg = (
                    f"dom-3: contained resource {cid!r} is not referenced from elsewhere in the resource "
                    f"and does not reference the container"
                )
                _err(issues, "invariant", (path, "contained", i), msg)

    def _ref1(self, obj: dict[str, Any], path: _Path, issues: list[Issue]) -> None:
        # ref-1: a local reference ('#id') must name a resource contained in this resource; inside a
        # contained resource '#id' names a sibling, so the container's ids are the scope for both.
        found: list[tuple[_Path, str]] = []
        _local_references(obj, path, found, True)
        if not found:
            return
        contained = obj.get("contained")
        ids = {c.get("id") for c in contained if type(c) is dict} if type(contained) is list else set()
        for ref_path, value in found:
            if value[1:] not in ids:
                msg = f"ref-1: local reference {_short(value)} names no contained resource of this resource"
                _err(issues, "invariant", ref_path, msg)

    def _object(self, obj: dict[str, Any], t: _Type, path: _Path, issues: list[Issue]) -> None:
        if not obj:
            _err(issues, "structure", path, "an empty JSON object is not allowed")
            return
        members = t.members
        seen: dict[str, str] | None = None  # choice element name -> type code of the variant present
        for key, val in obj.items():
            m = members.get(key)
            if m is None:
                if key[:1] == "_":
                    m = members.get(key[1:])
                    if m is not None and m.prim:
                        if m.choice:
                            seen = self._choice(seen, m, members, obj, path, issues)
                        self._companion(obj, m, val, path, issues)
                        continue
                elif key == "resourceType" and t.is_resource:
                    continue
                _err(issues, "structure", (path, key, -1), f"unknown element {key!r} in {t.name}")
                continue
            if m.choice:
                seen = self._choice(seen, m, members, obj, path, issues)
            kind = m.kind
            if m.array:
                if type(val) is not list:
                    _err(
                        issues,
                        "structure",
                        (path, m.expr, -1),
                        f"{key!r} repeats, so it must be a JSON array, found {_describe(val)}",
                    )
                    continue
                if not val:
                    _err(issues, "structure", (path, m.expr, -1), f"{key!r} must not be an empty array")
                    continue
                if m.max > 1 and len(val) > m.max:
                    _err(
                        issues,
                        "structure",
                        (path, m.expr, -1),
                        f"{key!r} allows at most {m.max} items, found {len(val)}",
                    )
                for i, item in enumerate(val):
                    # Inline fast paths for the common valid cases; _value reports the problems.
                    if item is None:
                        self._null_item(obj, m, i, path, issues)
                    elif kind == _K_COMPLEX and m.vs is None and type(item) is dict:
                        self._object(item, m.ctype or self._resolve(m), (path, m.expr, i), issues)
                    elif not (
                        (kind == _K_STRING and type(item) is str and item and not item.isspace())
                        or (kind == _K_PRIM and m.check(item) is None)  # type: ignore[misc]
                    ):
                        self._value(m, item, path, i, issues)
            elif val is None:
                _err(issues, "structure", (path, m.expr, -1), f"{key!r} must not be null")
            elif type(val) is list:
                _err(
                    issues,
                    "structure",
                    (path, m.expr, -1),
                    f"{key!r} does not repeat, so it must not be a JSON array",
                )
            elif kind == _K_STRING:
                if not (type(val) is str and val and not val.isspace()):
                    self._value(m, val, path, -1, issues)
            elif kind == _K_PRIM:
                if m.check(val) is not None:  # type: ignore[misc]
                    self._value(m, val, path, -1, issues)
            elif kind == _K_COMPLEX and m.vs is None and type(val) is dict:
                self._object(val, m.ctype or self._resolve(m), (path, m.expr, -1), issues)
            else:
                self._value(m, val, path, -1, issues)
        for name, keys in t.required:
            for k in keys:
                if k in obj:
                    break
            else:
                _err(issues, "required", (path, name, -1), f"{t.name}.{name} is required (min 1) but missing")
        if t.ele1 and len(obj) == 1 and "id" in obj:
            _err(
                issues, "invariant", path, "ele-1: an element must have a value or children, not only an 'id'"
            )
        if t.is_extension and ((seen is not None and "value" in seen) == ("extension" in obj)):
            msg = (
                "ext-1: an extension must have either a value[x] or nested extensions (not both, not neither)"
            )
            _err(issues, "invariant", path, msg)

    def _choice(
        self,
        seen: dict[str, str] | None,
        m: _Member,
        members: dict[str, _Member],
        obj: dict[str, Any],
        path: _Path,
        issues: list[Issue],
    ) -> dict[str, str]:
        if seen is None:
            return {m.base: m.tcode}
        prev = seen.get(m.base)
        if prev is None:
            seen[m.base] = m.tcode
        elif prev != m.tcode:
            # valueString + _valueString is one variant; valueString + valueQuantity are two.
            seen[m.base] = m.tcode
            names = [
                k for k in obj if (o := members.get(k.removeprefix("_"))) is not None and o.base == m.base
            ]
            msg = f"only one type of the choice element {m.base}[x] is allowed, found {', '.join(names)}"
            _err(issues, "structure", (path, m.base, -1), msg)
        return seen

    def _resolve(self, m: _Member) -> _Type:
        # Linking the compiled type into the member on first use makes recursive types (Extension,
        # Questionnaire.item) work without special cases; types never met are never compiled.
        ct = m.ctype = self._type(m.tcode)
        return ct

    def _value(self, m: _Member, v: Any, path: _Path, i: int, issues: list[Issue]) -> None:
        kind = m.kind
        label = repr(m.key) if i < 0 else repr(f"{m.key}[{i}]")
        if kind != _K_COMPLEX and kind != _K_RESOURCE:
            problem = m.check(v)  # type: ignore[misc]
            if problem is not None:
                _err(issues, problem[0], (path, m.expr, i), f"{label} {problem[1]}")
        elif kind == _K_COMPLEX:
            if type(v) is not dict:
                _err(
                    issues,
                    "structure",
                    (path, m.expr, i),
                    f"{label} must be a JSON object ({m.tcode}), found {_describe(v)}",
                )
                return
            node = (path, m.expr, i)
            self._object(v, m.ctype or self._resolve(m), node, issues)
            if m.vs is not None:
                if m.tcode == "Coding":
                    self._coding_binding(m, v, node, issues)
                else:
                    self._concept_binding(m, v, node, issues)
        elif type(v) is dict:
            self._resource(v, path, m.expr, i, m.key == "contained", issues)
        else:
            _err(
                issues,
                "structure",
                (path, m.expr, i),
                f"{label} must be a resource (a JSON object), found {_describe(v)}",
            )

    def _null_item(self, obj: dict[str, Any], m: _Member, i: int, path: _Path, issues: list[Issue]) -> None:
        # json.html: null only keeps a primitive array and its '_' companion aligned, so it is allowed
        # only where the other array has something at the same index.
        if m.prim:
            comp = obj.get("_" + m.key)
            if type(comp) is list and i < len(comp) and comp[i] is not None:
                return
            msg = f"{m.key}[{i}] is null but _{m.key}[{i}] is not an object"
        else:
            msg = f"{m.key}[{i}] must not be null"
        _err(issues, "structure", (path, m.expr, i), msg)

    def _companion(self, obj: dict[str, Any], m: _Member, val: Any, path: _Path, issues: list[Issue]) -> None:
        ckey = "_" + m.key
        here = (path, m.expr, -1)
        main = obj.get(m.key)
        if not m.array:
            if type(val) is list:
                _err(
                    issues, "structure", here, f"{ckey!r} must not be a JSON array: {m.key!r} does not repeat"
                )
            elif val is None:
                _err(issues, "structure", here, f"{ckey!r} must not be null")
            else:
                self._companion_object(val, m, main is not None, here, ckey, issues)
            return
        if type(val) is not list:
            _err(issues, "structure", here, f"{ckey!r} must be a JSON array: {m.key!r} repeats")
            return
        if not val:
            _err(issues, "structure", here, f"{ckey!r} must not be an empty array")
            return
        main_list = main if type(main) is list else None
        if main_list is not None and len(main_list) != len(val):
            msg = f"{ckey!r} has {len(val)} items but {m.key!r} has {len(main_list)}; the arrays must align"
            _err(issues, "structure", here, msg)
        for i, item in enumerate(val):
            main_item = main_list[i] if main_list is not None and i < len(main_list) else _ABSENT
            has_value = main_item is not None and main_item is not _ABSENT
            if item is not None:
                self._companion_object(item, m, has_value, (path, m.expr, i), f"{ckey}[{i}]", issues)
            elif main_item is _ABSENT:  # a null against a null was reported with the value array
                _err(
                    issues,
                    "structure",
                    (path, m.expr, i),
                    f"{ckey}[{i}] is null but {m.key}[{i}] has no value",
                )

    def _companion_object(
        self, c: Any, m: _Member, has_value: bool, node: _Path, label: str, issues: list[Issue]
    ) -> None:
        if type(c) is not dict:
            _err(
                issues,
                "structure",
                node,
                f"{label!r} must be an object with 'id' and/or 'extension', found {_describe(c)}",
            )
            return
        if not c:
            _err(issues, "structure", node, f"{label!r} must not be an empty object")
            return
        # The primitive type's own definition has exactly the members 'id' and 'extension'.
        self._object(c, self._type(m.tcode), node, issues)
        if not has_value and "extension" not in c:
            _err(issues, "invariant", node, f"ele-1: {label!r} has no extension and {m.key!r} has no value")

    def _concept_binding(self, m: _Member, cc: dict[str, Any], node: _Path, issues: list[Issue]) -> None:
        # Required binding on a CodeableConcept: some coding must come from the value set; codings
        # from other systems may accompany it (translations), a bad code in a bound system may not.
        vs = m.vs
        assert vs is not None
        codings = cc.get("coding")
        found = reported = False
        if type(codings) is list:
            for i, c in enumerate(codings):
                system = c.get("system") if type(c) is dict else None
                codes = vs.get(system) if type(system) is str else None
                if codes is None:
                    continue
                code = c.get("code")
                if type(code) is str and code in codes:
                    found = True
                else:
                    reported = True
                    msg = f"code {_code_text(code)} is not in {system}, as the required value set {m.vs_url} requires"
                    _err(issues, "code-invalid", ((node, "coding", i), "code", -1), msg)
        if not found and not reported:
            msg = (
                f"{m.key!r} has no coding from the required value set {m.vs_url} "
                f"(expected a code from {', '.join(sorted(vs))})"
            )
            _err(issues, "code-invalid", node, msg)

    def _coding_binding(self, m: _Member, c: dict[str, Any], node: _Path, issues: list[Issue]) -> None:
        vs = m.vs
        assert vs is not None
        system = c.get("system")
        code = c.get("code")
        if type(system) is not str:
            msg = f"{m.key!r} is bound to the required value set {m.vs_url}, so it must have a system"
            _err(issues, "code-invalid", (node, "system", -1), msg)
            return
        codes = vs.get(system)
        if codes is None:
            msg = f"system {_short(system)} is not in the required value set {m.vs_url}"
            _err(issues, "code-invalid", (node, "system", -1), msg)
        elif type(code) is not str or code not in codes:
            msg = f"code {_code_text(code)} is not in {system}, as the required value set {m.vs_url} requires"
            _err(issues, "code-invalid", (node, "code", -1), msg)


def _make_prim_check(p: PrimitiveDef) -> _Check:
    name = p.name
    if name == "boolean":
        return _check_boolean
    # positiveInt and unsignedInt are integers with a lower bound.
    if name == "integer":
        return _int_check(name, _INT_MIN)
    if name == "positiveInt":
        return _int_check(name, 1)
    if name == "unsignedInt":
        return _int_check(name, 0)
    if name == "decimal":
        return _decimal_check(p.regex or re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"))
    if name == "xhtml":
        return _check_xhtml
    if name == "base64Binary":
        return _check_base64
    # The string/markdown regex is only "some non-whitespace"; Python's Unicode \s would also refuse
    # text with e.g. a no-break space, which the spec's (Java) regex accepts.
    if name in ("string", "markdown") or p.regex is None:
        return _plain_string_check(name)
    if name in ("date", "dateTime", "instant"):
        return _date_check(name, p.regex)
    return _regex_check(name, p.regex)


def _bound_code_check(base: _Check, codes: frozenset[str], vs_url: str) -> _Check:
    def check(v: Any) -> tuple[str, str] | None:
        if type(v) is str and v in codes:  # every code of the value set is a lexically valid code
            return None
        problem = base(v)
        if problem is not None:
            return problem
        return "code-invalid", f"code {_short(v)} is not in the required value set {vs_url}"

    return check


def _code_text(code: object) -> str:
    return _short(code) if type(code) is str else "(missing)"


def _collect_local_refs(node: Any, out: set[str], skip_contained: bool, key: str) -> None:
    # Collects '#id' strings, and the bare '#' of Reference.reference (a reference to the container);
    # a bare '#' elsewhere (a Quantity.unit of "#", say) is not a reference.
    items = node.items() if type(node) is dict else ((key, v) for v in node)
    for k, v in items:
        if type(v) is str:
            if v[:1] == "#" and (len(v) > 1 or k == "reference"):
                out.add(v)
        elif (type(v) is dict or type(v) is list) and not (skip_contained and k == "contained"):
            _collect_local_refs(v, out, False, k)


def _local_references(node: dict[str, Any], path: _Path, out: list[tuple[_Path, str]], root: bool) -> None:
    # Reference.reference values '#id' (the bare '#' names the container itself and always resolves),
    # in this resource and its contained ones, not in nested resources that are roots of their own
    # (Bundle.entry.resource, Parameters.parameter.resource).
    for k, v in node.items():
        if k == "reference" and type(v) is str and len(v) > 1 and v[0] == "#":
            out.append(((path, k, -1), v))
        elif type(v) is dict:
            if "resourceType" not in v:
                _local_references(v, (path, k, -1), out, False)
        elif type(v) is list:
            for i, item in enumerate(v):
                if type(item) is dict and ("resourceType" not in item or (root and k == "contained")):
                    _local_references(item, (path, k, i), out, False)


_default: Validator | None = None
_default_lock = threading.Lock()


def _default_validator() -> Validator:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Validator(get_facts())
    return _default


def validate_resource(resource: object, expected_type: str | None = None) -> list[Issue]:
    """Every structural issue of a FHIR R4 JSON resource as parsed by ``jsonio.loads``; [] means valid.

    Never raises. When ``expected_type`` (say, the type in the request URL) is given, ``resourceType``
    must equal it.
    """
    return _default_validator().validate(resource, expected_type)
