"""Turn query parameters into a SearchQuery, refusing what the engine does not support.

Unknown parameters follow R4 search.html handling: ``Prefer: handling=strict`` refuses them with
400; the default (lenient) ignores them, leaves them out of the self link and reports them.
Known result parameters that are not implemented are always refused: silently ignoring ``_sort``
or ``_include`` would return a wrong answer that looks right.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_server.errors import FhirError, OutcomeIssue, invalid
from fhir_server.search.params.date import parse_date_value
from fhir_server.search.params.token import or_values
from fhir_server.search.query import Condition, SearchQuery

# Parameters every resource type supports in this engine, with their type.
COMMON_PARAMS: dict[str, str] = {"_id": "token", "_lastUpdated": "date"}

# Format/paging parameters handled elsewhere and never treated as search criteria.
_CONTROL = {"_format", "_pretty", "_cursor"}

_REFUSED_RESULT_PARAMS = {
    "_sort", "_include", "_revinclude", "_elements", "_contained", "_containedType", "_score",
    "_list", "_query", "_has", "_text", "_content", "_filter", "_tag", "_profile", "_security", "_source",
}


def _refuse(name: str) -> FhirError:
    return FhirError(
        400,
        [OutcomeIssue("error", "not-supported", f"Search parameter '{name}' is not supported by this server")],
    )


def parse_search(
    resource_types: Sequence[str],
    params: Sequence[tuple[str, str]],
    *,
    default_count: int,
    max_count: int,
    strict: bool = False,
    system: bool = False,
) -> SearchQuery:
    query = SearchQuery(resource_types=tuple(resource_types), count=default_count)
    conditions: list[Condition] = []
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
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
            continue
        if name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise invalid(f"_total must be none, estimate or accurate, got '{value}'")
            query.total = value
            query.link_params.append(("_total", value))
            continue
        if name == "_summary":
            if value == "count":
                query.summary_count = True
            elif value != "false":
                raise _refuse(f"_summary={value}")
            query.link_params.append(("_summary", value))
            continue
        if name == "_type" and system:
            types = [t.strip() for t in value.split(",") if t.strip()]
            if not types:
                raise invalid("_type must name at least one resource type")
            unknown = [t for t in types if t not in resource_types]
            if unknown:
                raise FhirError(400, f"Unknown or unsupported resource type(s) in _type: {', '.join(unknown)}",
                                code="not-supported")
            query.resource_types = tuple(t for t in resource_types if t in types)
            query.link_params.append(("_type", ",".join(types)))
            continue
        if name in _REFUSED_RESULT_PARAMS or raw_name.startswith("_has:"):
            raise _refuse(raw_name)
        ptype = COMMON_PARAMS.get(name)
        if ptype is None:
            if strict:
                raise FhirError(
                    400,
                    [OutcomeIssue("error", "not-supported", f"Unknown search parameter '{raw_name}'")],
                )
            query.ignored.append(raw_name)
            continue
        if modifier:
            raise _refuse(raw_name)
        if value == "":
            # An empty value is ignored (R4 search.html: "parameters with no value are ignored").
            continue
        if ptype == "token":
            values: tuple[object, ...] = tuple(v for v in or_values(value) if v)
        else:
            values = tuple(parse_date_value(v, name) for v in or_values(value))
        conditions.append(Condition(name=name, type=ptype, values=values))
        query.link_params.append((raw_name, value))
    query.conditions = tuple(conditions)
    return query
