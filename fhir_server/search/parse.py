"""Turn query parameters into a SearchQuery, refusing what the engine does not support.

Unknown or unsupported parameters follow R4 search.html handling: ``Prefer: handling=strict``
refuses them with 400; the default (lenient) ignores them, leaves them out of the self link and
reports them.  Modifiers, prefixes and result parameters that the engine does not implement are
always refused: silently ignoring them would return a wrong answer that looks right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_server.errors import FhirError, OutcomeIssue, invalid
from fhir_server.model.facts import get_facts
from fhir_server.search.normalize import norm
from fhir_server.search.params import near
from fhir_server.search.params.date import PREFIXES, parse_date_value
from fhir_server.search.params.token import split_escaped, unescape
from fhir_server.search.query import (
    AllOf,
    AnyOf,
    Chain,
    CompositeValue,
    Condition,
    Has,
    Include,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    SearchQuery,
    SortKey,
    TokenValue,
)
from fhir_server.search.registry import SearchParamDef, get_registry

_CONTROL = {"_format", "_pretty", "_cursor"}
_REFUSED = {"_contained", "_containedType", "_score", "_list", "_query", "_text", "_content", "_filter"}
_SUMMARY = {"true", "text", "data", "count", "false"}
_SORTABLE = {"id", "lastUpdated", "string", "token", "date", "number", "quantity", "uri", "reference"}

# Modifiers the engine implements, per parameter type (R4 search.html#modifiers).
_MODIFIERS: dict[str, set[str]] = {
    "string": {"missing", "exact", "contains"},
    "token": {"missing", "not", "text", "of-type"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "reference": {"missing", "identifier"},
    "uri": {"missing", "below", "above"},
    "composite": {"missing"},
    "near": {"missing"},
    "id": {"missing", "not"},
    "lastUpdated": {"missing"},
}


class _Unsupported(Exception):
    """A parameter this engine does not know or cannot evaluate (lenient handling may ignore it)."""


def _refuse(what: str) -> FhirError:
    return FhirError(400, [OutcomeIssue("error", "not-supported", f"{what} is not supported by this server")])


def _kind(param: SearchParamDef) -> str:
    if param.code == "_id":
        return "id"
    if param.code == "_lastUpdated":
        return "lastUpdated"
    if param.url == near.URL:
        return "near"
    return param.type


class SearchParser:
    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/") + "/"
        self.registry = get_registry()
        self.types = get_facts().resource_types

    # -- parameters ---------------------------------------------------------------------------
    def param(self, resource_type: str | None, code: str, types: Sequence[str]) -> SearchParamDef:
        """The definition of ``code`` for one type, or for every type of a system search."""
        candidates = [resource_type] if resource_type else list(types)
        found: SearchParamDef | None = None
        for rt in candidates:
            p = self.registry.get(rt, code)
            if p is None or not p.supported:
                raise _Unsupported(code)
            found = found or p
        if found is None:
            raise _Unsupported(code)
        return found

    def condition(self, resource_type: str | None, types: Sequence[str], name: str, value: str) -> Any:
        """Parse one ``name=value`` occurrence (name may carry a modifier, a chain or _has)."""
        if name.startswith("_has:"):
            if resource_type is None:
                raise _refuse("_has in a system search")
            return self._has(resource_type, name, value)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        param = self.param(resource_type, code, types)
        kind = _kind(param)
        if dot:
            return self._chain(resource_type, types, param, modifier, rest, value)
        if param.inline:
            return self._inline_itself(resource_type, param, modifier, value)
        type_modifier: str | None = None
        if modifier and kind == "reference" and modifier in self.types:
            type_modifier, modifier = modifier, ""
            if param.targets and type_modifier not in param.targets:
                raise invalid(f"'{type_modifier}' is not a target type of search parameter '{code}'")
        if modifier and modifier not in _MODIFIERS.get(kind, set()):
            raise _refuse(f"Modifier ':{modifier}' in '{name}' ({kind} parameter)")
        rt = resource_type
        if modifier == "missing":
            if value not in ("true", "false"):
                raise invalid(f"':missing' takes true or false, got '{value}'")
            return Condition(rt or "", code, kind, (value == "true",), "missing")
        parts = [p for p in split_escaped(value, ",")]
        if modifier == "identifier":
            return Condition(rt or "", f"{code}:identifier", "token", tuple(self._token(p) for p in parts))
        if modifier == "of-type":
            return Condition(rt or "", f"{code}:of-type", "token", tuple(self._of_type(p) for p in parts))
        values = tuple(self._value(kind, param, p, modifier, type_modifier) for p in parts)
        comps = param.components if kind == "composite" else ()
        second = comps[1].type if len(comps) > 1 else None
        third = comps[2].type if len(comps) > 2 else None
        return Condition(rt or "", code, kind, values, modifier or None, second, third)

    # -- values -----------------------------------------------------------------------------
    def _value(self, kind: str, param: SearchParamDef, raw: str, modifier: str, type_modifier: str | None) -> Any:
        if kind == "id":
            return unescape(raw)
        if kind in ("date", "lastUpdated"):
            return parse_date_value(unescape(raw), param.code)
        if kind == "string":
            text = unescape(raw)
            return text if modifier == "exact" else norm(text)
        if kind == "token":
            if modifier == "text":
                return norm(unescape(raw))
            return self._token(raw)
        if kind == "number":
            return self._number(unescape(raw), param.code)
        if kind == "quantity":
            return self._quantity(raw, param.code)
        if kind == "reference":
            return self._reference(unescape(raw), param, type_modifier)
        if kind == "uri":
            return unescape(raw)
        if kind == "composite":
            return self._composite(raw, param)
        if kind == "near":
            return near.parse_near(raw, param.code)
        raise _refuse(f"Search parameter '{param.code}' of type {kind}")

    @staticmethod
    def _token(raw: str) -> TokenValue:
        pieces = split_escaped(raw, "|")
        if len(pieces) == 1:
            return TokenValue(None, unescape(pieces[0]) or None, any_system=True)
        if len(pieces) != 2:
            raise invalid(f"Invalid token '{raw}': expected [system|]code")
        system, code = unescape(pieces[0]), unescape(pieces[1])
        if not system and not code:
            raise invalid(f"Invalid token '{raw}'")
        return TokenValue(system or None, code or None, any_system=False)

    @staticmethod
    def _of_type(raw: str) -> TokenValue:
        pieces = [unescape(p) for p in split_escaped(raw, "|")]
        if len(pieces) != 3 or not all(pieces):
            raise invalid(f"':of-type' takes system|code|value, got '{raw}'")
        return TokenValue(pieces[0], f"{pieces[1]}|{pieces[2]}")

    @staticmethod
    def _number(raw: str, code: str) -> NumberValue:
        prefix = "eq"
        if raw[:2] in PREFIXES and raw[2:3] not in ("", "|"):
            prefix, raw = raw[:2], raw[2:]
        try:
            value = Decimal(raw)
        except InvalidOperation:
            raise invalid(f"Invalid number '{raw}' for search parameter '{code}'") from None
        if not value.is_finite():
            raise invalid(f"Invalid number '{raw}' for search parameter '{code}'")
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        half = Decimal(5).scaleb(exponent - 1)
        return NumberValue(prefix, value, value - half, value + half)

    def _quantity(self, raw: str, code: str) -> QuantityValue:
        pieces = [unescape(p) for p in split_escaped(raw, "|")]
        if len(pieces) not in (1, 3):
            raise invalid(f"Invalid quantity '{raw}': expected [prefix]number[|system|code]")
        number = self._number(pieces[0], code)
        if len(pieces) == 1:
            return QuantityValue(number, None, None)
        return QuantityValue(number, pieces[1] or None, pieces[2] or None)

    def _reference(self, raw: str, param: SearchParamDef, type_modifier: str | None) -> ReferenceValue:
        if not raw:
            raise invalid(f"Empty reference for search parameter '{param.code}'")
        if raw.startswith(self.base):
            raw = raw[len(self.base):]
        elif "://" in raw or raw.startswith(("urn:", "#")):
            return ReferenceValue(None, None, raw.split("|", 1)[0])
        segs = raw.split("/")
        if len(segs) >= 4 and segs[-2] == "_history":
            segs = segs[:-2]  # a versioned reference matches the resource
        if len(segs) == 1:
            if type_modifier is None and len(param.targets) == 1:
                type_modifier = param.targets[0]
            return ReferenceValue(type_modifier, segs[0])
        if len(segs) == 2 and segs[0] in self.types:
            if type_modifier is not None and type_modifier != segs[0]:
                raise invalid(f"Reference '{raw}' contradicts the modifier ':{type_modifier}'")
            return ReferenceValue(segs[0], segs[1])
        if param.type == "reference" and "canonical" not in param.targets:
            raise invalid(f"Invalid reference '{raw}' for search parameter '{param.code}'")
        return ReferenceValue(None, None, raw)

    def _composite(self, raw: str, param: SearchParamDef) -> CompositeValue:
        pieces = split_escaped(raw, "$")
        comps = param.components
        if len(pieces) != len(comps):
            raise invalid(f"Composite '{param.code}' takes {len(comps)} values joined by '$', got '{raw}'")
        first: TokenValue | ReferenceValue
        if comps[0].type == "reference":
            # Read as the component's own parameter reads it (its targets name a bare id's type).
            own = self.registry.get(param.base, comps[0].code) or param
            first = self._reference(unescape(pieces[0]), own, None)
        else:
            first = self._token(pieces[0])
        second = self._component_value(pieces[1], comps[1].type, param)
        third = self._component_value(pieces[2], comps[2].type, param) if len(comps) == 3 else None
        return CompositeValue(first, second, third)

    def _component_value(self, piece: str, component_type: str, param: SearchParamDef) -> Any:
        if component_type == "token":
            return self._token(piece)
        if component_type == "quantity":
            return self._quantity(piece, param.code)
        if component_type == "number":
            return self._number(unescape(piece), param.code)
        if component_type == "date":
            return parse_date_value(unescape(piece), param.code)
        if component_type == "string":
            return norm(unescape(piece))
        raise _refuse(f"Composite search parameter '{param.code}'")

    # -- chains ------------------------------------------------------------------------------
    def _chain(self, resource_type: str | None, types: Sequence[str], param: SearchParamDef,
               modifier: str, rest: str, value: str) -> Chain:
        if _kind(param) != "reference":
            raise invalid(f"Only reference parameters can be chained; '{param.code}' is {param.type}")
        if resource_type is None:
            raise _refuse("Chained parameters in a system search")
        if param.inline:
            return self._inline_chain(resource_type, param, modifier, rest, value)
        if modifier:
            if modifier not in self.types:
                raise invalid(f"Chain modifier ':{modifier}' is not a resource type")
            targets: tuple[str, ...] = (modifier,)
        else:
            targets = tuple(t for t in param.targets if t in self.types) or tuple(sorted(self.types))
        inner_code = rest.partition(".")[0].partition(":")[0]
        usable = tuple(t for t in targets if (p := self.registry.get(t, inner_code)) is not None and p.supported)
        if not usable:
            raise _Unsupported(f"{param.code}.{rest}")
        if len(usable) == 1:
            inner = self.condition(usable[0], usable, rest, value)
        else:
            # The chained parameter is evaluated on every possible target type at once.
            inner = self.condition(None, usable, rest, value)
        return Chain(resource_type, param.code, usable, inner)

    # -- parameters whose targets are inside the resource (Bundle composition / message) ----------
    def _inline_itself(self, resource_type: str | None, param: SearchParamDef, modifier: str, value: str) -> Any:
        """``composition:missing=``; any other use names a resource inside the Bundle by a
        reference, which it has none of."""
        if modifier != "missing":
            raise _refuse(f"Search parameter '{param.code}' without a chain (its target is inside the "
                          f"{param.base}: search it as '{param.code}.[parameter]')")
        if value not in ("true", "false"):
            raise invalid(f"':missing' takes true or false, got '{value}'")
        # The marker row (extract.py) is there exactly when the inline resource is of a target type.
        return Condition(resource_type or "", param.code, "token", (value == "true",), "missing")

    def _inline_chain(self, resource_type: str, param: SearchParamDef, modifier: str, rest: str,
                      value: str) -> Any:
        """``composition.subject=Patient/1``: the inner parameter tested on the inline resource,
        whose rows the Bundle holds as ``composition.<param>`` (extract.py)."""
        if modifier and modifier not in param.targets:
            raise invalid(f"'{modifier}' is not a target type of search parameter '{param.code}'")
        targets = (modifier,) if modifier else param.targets
        inner_code = rest.partition(".")[0].partition(":")[0]
        branches: list[Any] = []
        for target in targets:
            p = self.registry.get(target, inner_code)
            if p is None or not p.supported:
                continue
            inner = self.condition(target, [target], rest, value)
            if not isinstance(inner, Condition):
                # References of the inline resource may point at other entries of the same Bundle,
                # which a chain through this server's resources would not find.
                raise _refuse(f"Chaining beyond the resource inside the {param.base} ('{param.code}.{rest}')")
            branches.append(self._inline_condition(resource_type, param.code, target, inner, len(targets) > 1))
        if not branches:
            raise _Unsupported(f"{param.code}.{rest}")
        return branches[0] if len(branches) == 1 else AnyOf(tuple(branches))

    @staticmethod
    def _inline_condition(resource_type: str, code: str, target: str, inner: Condition, typed: bool) -> Any:
        values = inner.values
        kind = inner.kind
        if kind == "id":
            # The inline resource's id and meta.lastUpdated are index rows, not columns.
            kind = "token"
            if inner.modifier != "missing":
                values = tuple(TokenValue(None, v, any_system=True) for v in values)
        elif kind == "lastUpdated":
            kind = "date"
        cond = replace(inner, resource_type=resource_type, code=f"{code}.{inner.code}", kind=kind, values=values)
        negative = inner.modifier == "not" or (inner.modifier == "missing" and inner.values[0] is True)
        if not negative and not typed:
            return cond  # a row of the inline resource exists only when the resource does
        # "Has no subject" is said of a Composition that is there, of that type.
        marker = Condition(resource_type, code, "token", (TokenValue(None, target),))
        return AllOf((marker, cond))

    def _has(self, resource_type: str, name: str, value: str) -> Has:
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise invalid(f"'{name}' must be _has:Type:reference:parameter")
        _, source, ref_code, rest = parts
        if source not in self.types:
            raise invalid(f"Unknown resource type '{source}' in '{name}'")
        ref = self.registry.get(source, ref_code)
        if ref is None or not ref.supported or ref.type != "reference":
            raise invalid(f"'{ref_code}' is not a reference search parameter of {source}")
        if ref.inline:
            raise _refuse(f"'{name}' (the target of {source}.{ref_code} is inside the {source})")
        if ref.targets and resource_type not in ref.targets:
            raise invalid(f"{source}.{ref_code} cannot refer to {resource_type}")
        inner = self.condition(source, [source], rest, value)
        return Has(resource_type, source, ref_code, inner)

    # -- result parameters ----------------------------------------------------------------------
    def sort(self, resource_types: Sequence[str], value: str) -> tuple[SortKey, ...]:
        keys: list[SortKey] = []
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            descending = item.startswith("-")
            code = item.lstrip("-")
            try:
                param = self.param(resource_types[0] if len(resource_types) == 1 else None, code, resource_types)
            except _Unsupported:
                raise invalid(f"_sort: cannot sort by unknown search parameter '{code}'") from None
            kind = _kind(param)
            if kind not in _SORTABLE or param.inline:
                raise _refuse(f"Sorting by '{code}' ({kind})")
            keys.append(SortKey(code, kind, descending))
        return tuple(keys)

    def include(self, raw_name: str, value: str, resource_types: Sequence[str]) -> Include:
        reverse = raw_name.startswith("_revinclude")
        modifier = raw_name.partition(":")[2]
        if modifier not in ("", "iterate", "recurse"):
            raise _refuse(f"'{raw_name}'")
        iterate = modifier in ("iterate", "recurse")
        pieces = value.split(":")
        if value == "*" and not reverse:
            return Include(resource_types[0] if len(resource_types) == 1 else "*", "*", None, iterate, False)
        if len(pieces) not in (2, 3) or pieces[0] not in self.types:
            raise invalid(f"'{raw_name}={value}' must be SourceType:parameter[:TargetType]")
        source, code = pieces[0], pieces[1]
        target = pieces[2] if len(pieces) == 3 else None
        if target is not None and target not in self.types:
            raise invalid(f"Unknown target type '{target}' in '{raw_name}={value}'")
        if code != "*":
            p = self.registry.get(source, code)
            if p is None or not p.supported or p.type != "reference":
                raise invalid(f"'{code}' is not a reference search parameter of {source}")
            if p.inline:
                raise _refuse(f"'{raw_name}={value}' (the target of {source}.{code} is inside the {source})")
            if target is not None and p.targets and target not in p.targets:
                raise invalid(f"{source}.{code} cannot refer to {target}")
        if not reverse and not iterate and source not in resource_types:
            raise invalid(f"_include={value} names {source}, which this search does not return")
        return Include(source, code, target, iterate, reverse)


def parse_search(
    resource_types: Sequence[str],
    params: Sequence[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    strict: bool = False,
    system: bool = False,
    base_url: str = "",
) -> SearchQuery:
    parser = SearchParser(base_url)
    query = SearchQuery(resource_types=tuple(resource_types), count=default_count)
    conditions: list[Any] = []
    includes: list[Include] = []
    deferred: list[tuple[str, str]] = []
    for raw_name, value in params:
        name = raw_name.partition(":")[0] if raw_name.startswith(("_include", "_revinclude")) else raw_name
        if name in _CONTROL:
            if name == "_cursor":
                query.cursor = value or None
            continue
        if name == "_count":
            try:
                count = int(value)
            except ValueError:
                raise invalid(f"_count must be a non-negative integer, got '{value}'") from None
            if count < 0:
                raise invalid(f"_count must be a non-negative integer, got '{value}'")
            query.count = min(count, max_count)
            query.link_params.append(("_count", str(query.count)))
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise invalid(f"_total must be none, estimate or accurate, got '{value}'")
            query.total = value
            query.link_params.append(("_total", value))
        elif name == "_summary":
            if value not in _SUMMARY:
                raise invalid(f"_summary must be one of {', '.join(sorted(_SUMMARY))}, got '{value}'")
            query.summary = value
            query.link_params.append(("_summary", value))
        elif name == "_elements":
            query.elements = tuple(e.strip() for e in value.split(",") if e.strip())
            query.link_params.append(("_elements", value))
        elif name == "_type" and system:
            types = [t.strip() for t in value.split(",") if t.strip()]
            if not types:
                raise invalid("_type must name at least one resource type")
            unknown = [t for t in types if t not in resource_types]
            if unknown:
                raise FhirError(400, f"Unknown or unsupported resource type(s) in _type: {', '.join(unknown)}",
                                code="not-supported")
            query.resource_types = tuple(t for t in resource_types if t in types)
            query.link_params.append(("_type", ",".join(types)))
        elif name in _REFUSED:
            raise _refuse(f"Search parameter '{raw_name}'")
        elif name in ("_sort", "_include", "_revinclude"):
            deferred.append((raw_name, value))  # they depend on the final resource types (_type)
        elif value == "":
            continue  # R4 search.html: a parameter without a value is ignored
        else:
            deferred.append((raw_name, value))
    final_types = query.resource_types
    single = final_types[0] if len(final_types) == 1 else None
    for raw_name, value in deferred:
        name = raw_name.partition(":")[0]
        if name == "_sort":
            query.sort = parser.sort(final_types, value)
            query.link_params.append((raw_name, value))
        elif name in ("_include", "_revinclude"):
            includes.append(parser.include(raw_name, value, final_types))
            query.link_params.append((raw_name, value))
        else:
            try:
                conditions.append(parser.condition(single, final_types, raw_name, value))
            except _Unsupported:
                if strict:
                    raise FhirError(
                        400,
                        [OutcomeIssue("error", "not-supported", f"Unknown or unsupported search parameter '{raw_name}'")],
                    ) from None
                query.ignored.append(raw_name)
                continue
            query.link_params.append((raw_name, value))
    query.conditions = tuple(conditions)
    query.includes = tuple(includes)
    return query
