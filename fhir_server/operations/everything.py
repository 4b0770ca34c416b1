"""Patient/[id]/$everything and Encounter/[id]/$everything (R4 patient-operation-everything,
encounter-operation-everything): the owner and every resource in its compartment, paged.

Membership is the compartment definition's (type, parameter) pairs evaluated on the reference
index, so the result is exactly what compartment searches return, for all types in one page
sequence.  Parameters: ``_since`` (changed at or after), ``_type`` (comma list), ``_count``, and
``start``/``end`` (care dates: resources whose type has a clinical ``date`` parameter must have a
date overlapping the range; resources without such a date are always in)."""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse
from fhir_server.interactions.search import respond, restrict
from fhir_server.model.facts import get_facts
from fhir_server.model.registry import served_types
from fhir_server.operations.parameters import posted_parameters
from fhir_server.search.params.date import parse_date_value
from fhir_server.search.query import AnyOf, Condition, DateRange, InCompartment, SearchQuery, TypeIn
from fhir_server.search.registry import get_registry

_KNOWN = {"_since", "_type", "_count", "_cursor", "start", "end", "_format", "_pretty"}


def compartment_pairs(owner_type: str, types: list[str]) -> tuple[tuple[str, str], ...]:
    """(type, reference parameter) pairs that put a resource of ``types`` in the compartment."""
    registry = get_registry()
    pairs = []
    for rt in types:
        for code in get_facts().compartments.get(owner_type, {}).get(rt, ()):
            p = registry.get(rt, code)
            if p is not None and p.supported and p.type == "reference":
                pairs.append((rt, code))
    return tuple(pairs)


def _care_dates(types: list[str], value: DateRange) -> AnyOf:
    registry = get_registry()
    dated = [rt for rt in types if (p := registry.get(rt, "date")) is not None and p.supported and p.type == "date"]
    undated = tuple(rt for rt in types if rt not in dated)
    branches: list[Any] = [Condition(rt, "date", "date", (value,)) for rt in dated]
    if undated:
        branches.append(TypeIn(undated))
    return AnyOf(tuple(branches))


def everything(ctx: Context, req: FhirRequest, owner_type: str, owner_id: str) -> FhirResponse:
    if req.policy is not None:
        req.policy.require("r", owner_type)
    owner = ctx.backend.read(owner_type, owner_id)
    if owner is None:
        raise FhirError(404, f"Resource {owner_type}/{owner_id} is not known", code="not-found")
    if owner.deleted:
        raise FhirError(410, f"Resource {owner_type}/{owner_id} was deleted", code="deleted")
    if req.policy is not None and not req.policy.visible(owner):
        raise FhirError(403, f"{owner_type}/{owner_id} is outside what the granted scopes allow", code="forbidden")
    params = list(req.query) + (posted_parameters(ctx, req, "$everything") if req.method == "POST" else [])
    unknown = sorted({k for k, _ in params if k not in _KNOWN})
    if unknown:
        raise FhirError(400, f"$everything does not take the parameter(s) {', '.join(unknown)}", code="not-supported")
    members = get_facts().compartments.get(owner_type, {})
    served = set(served_types())
    types = [rt for rt in members if rt in served]
    if owner_type not in types:
        types.append(owner_type)
    link: list[tuple[str, str]] = []
    query = SearchQuery(resource_types=(), count=ctx.settings.default_count)
    since: int | None = None
    care: list[DateRange] = []
    wanted: set[str] = set()
    for key, value in params:
        if key == "_type":
            # Repeated _type parameters add up (R4 patient-operation-everything: 0..*).
            named = [t.strip() for t in value.split(",") if t.strip()]
            bad = [t for t in named if t not in types]
            if bad or not named:
                raise FhirError(400, f"_type {', '.join(bad) or '(empty)'} is not part of the {owner_type} "
                                "compartment", code="invalid")
            wanted.update(named)
        elif key == "_since":
            since = parse_date_value(value, "_since").lo
        elif key == "_count":
            if not value.isdigit():
                raise FhirError(400, f"_count must be a non-negative integer, got '{value}'", code="invalid")
            query.count = min(int(value), ctx.settings.max_count)
        elif key in ("start", "end"):
            rng = parse_date_value(value, key)
            # Overlap with the care period: the resource's date ends after start / begins before end.
            care.append(DateRange("ge" if key == "start" else "le", rng.lo, rng.hi))
        elif key == "_cursor":
            query.cursor = value
            continue
        else:
            continue
        link.append((key, value))
    if wanted:
        types = [t for t in types if t in wanted]
    conditions: list[Any] = [InCompartment(owner_type, owner_id, compartment_pairs(owner_type, types))]
    if since is not None:
        conditions.append(Condition("", "_lastUpdated", "lastUpdated", (DateRange("ge", since, since + 1),)))
    conditions += [_care_dates(types, bound) for bound in care]
    query.resource_types = tuple(types)
    query.conditions = tuple(conditions)
    query.link_params = link
    if req.policy is not None:
        # Every type returned needs read and search permission (R4 $everything is both).
        restrict(req.policy, query, explicit_types=bool(wanted), permissions="rs")
    return respond(ctx, req, query, f"{ctx.base}/{owner_type}/{owner_id}/$everything")
