"""search for a type, a compartment and the whole system (R4 http.html#search, search.html).

Bundles are assembled from stored bytes; only _summary/_elements cut resources down.  Every
resource a search returns (matches and includes) passes through ``visible`` first: the one place
where an access policy filters results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fhir_server.errors import FhirError, OutcomeIssue, operation_outcome
from fhir_server.http.negotiation import render_stored
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse
from fhir_server.interactions.paging import format_params, page_links
from fhir_server.model import jsonio
from fhir_server.model.bundle import Entry, assemble
from fhir_server.model.facts import get_facts
from fhir_server.model.instant import now_instant
from fhir_server.model.registry import require_served_type, served_types
from fhir_server.search.parse import parse_search
from fhir_server.search.query import AllOf, AnyOf, Chain, Condition, Has, ReferenceValue, SearchQuery
from fhir_server.search.registry import get_registry
from fhir_server.search.subset import subset
from fhir_server.storage.base import StoredResource

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy

# The access-policy hook: which stored resources this request may see (all, until auth lands).
Visible = Callable[[StoredResource], bool]


def _all_visible(_: StoredResource) -> bool:
    return True


def _params(req: FhirRequest) -> list[tuple[str, str]]:
    params = list(req.query)
    if req.method == "POST":
        ct = (req.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ct != "application/x-www-form-urlencoded":
            raise FhirError(415, "POST _search needs an application/x-www-form-urlencoded body",
                            code="not-supported")
        try:
            params += parse_qsl(req.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise FhirError(400, "The form body is not UTF-8", code="invalid") from None
    return params


def compartment_condition(compartment: str, owner_id: str, resource_type: str) -> AnyOf:
    """Membership of ``resource_type`` resources in the compartment of ``compartment/owner_id``."""
    params = get_facts().compartments.get(compartment, {}).get(resource_type)
    if not params:
        raise FhirError(
            404, f"{resource_type} is not part of the {compartment} compartment", code="not-found"
        )
    registry = get_registry()
    conds = []
    for code in params:
        p = registry.get(resource_type, code)
        if p is None or not p.supported or p.type != "reference":
            continue
        conds.append(Condition(resource_type, code, "reference", (ReferenceValue(compartment, owner_id),)))
    if compartment == resource_type:
        conds.append(Condition(resource_type, "_id", "id", (owner_id,)))
    if not conds:
        raise FhirError(501, f"Compartment search {compartment}/{owner_id}/{resource_type} is not supported",
                        code="not-supported")
    return AnyOf(tuple(conds))


def search(ctx: Context, req: FhirRequest, resource_type: str | None = None,
           compartment: tuple[str, str] | None = None, visible: Visible = _all_visible) -> FhirResponse:
    types = [resource_type] if resource_type else served_types()
    query = parse_search(
        types,
        _params(req),
        default_count=ctx.settings.default_count,
        max_count=ctx.settings.max_count,
        strict=req.prefer().get("handling") == "strict",
        system=resource_type is None,
        base_url=ctx.base,
    )
    url = f"{ctx.base}/{resource_type}" if resource_type else ctx.base
    if compartment is not None:
        assert resource_type is not None
        owner_type, owner_id = compartment
        query.conditions = (compartment_condition(owner_type, owner_id, resource_type), *query.conditions)
        url = f"{ctx.base}/{owner_type}/{owner_id}/{resource_type}"
    if req.policy is not None:
        # Matches are shown, so they need read as well as search: totals then count what is shown.
        restrict(req.policy, query, explicit_types=resource_type is not None or any(
            k == "_type" for k, _ in query.link_params), permissions="rs")
        visible = req.policy.visible
    return respond(ctx, req, query, url, visible)


def restrict(policy: AccessPolicy, query: SearchQuery, *, explicit_types: bool, permissions: str = "s") -> None:
    """Narrow a search to what the policy lets the caller see, so that matches and totals are
    right (not filtered afterwards); a type asked for by name that the scopes never allow is 403."""
    if len(query.resource_types) == 1:
        policy.require(permissions[-1], query.resource_types[0])
        extra = policy.type_condition(query.resource_types[0], permissions)
    else:
        allowed, extra = policy.multi_type_condition(query.resource_types, permissions)
        if explicit_types:
            for rt in query.resource_types:
                if rt not in allowed:
                    policy.require(permissions[-1], rt)
        query.resource_types = tuple(allowed) or query.resource_types
    # Chains and _has test other resources: only those the caller may search take part, or a
    # patient's token could learn facts about other patients through them.
    query.conditions = tuple(_restrict_joined(policy, c, permissions) for c in query.conditions)
    if extra is not None:
        query.conditions = (*query.conditions, extra)


def _restrict_joined(policy: AccessPolicy, cond: Any, permissions: str) -> Any:
    if isinstance(cond, Chain):
        allowed, extra = policy.multi_type_condition(cond.target_types, permissions)
        if not allowed:
            policy.require(permissions[-1], cond.target_types[0])
        inner = _restrict_joined(policy, cond.inner, permissions)
        return replace(cond, target_types=tuple(allowed), inner=inner if extra is None else AllOf((inner, extra)))
    if isinstance(cond, Has):
        policy.require(permissions[-1], cond.source_type)
        inner = _restrict_joined(policy, cond.inner, permissions)
        extra = policy.type_condition(cond.source_type, permissions)
        return replace(cond, inner=inner if extra is None else AllOf((inner, extra)))
    if isinstance(cond, AnyOf | AllOf):
        return replace(cond, conditions=tuple(_restrict_joined(policy, c, permissions) for c in cond.conditions))
    return cond


def respond(ctx: Context, req: FhirRequest, query: SearchQuery, url: str,
            visible: Visible = _all_visible) -> FhirResponse:
    page = ctx.backend.search(query, max_include=ctx.settings.max_include)
    links = page_links(url, query.link_params, query.cursor, page.next_cursor, format_params(req.query),
                       prev_cursor=page.prev_cursor)
    entries = [
        Entry(f"{ctx.base}/{s.resource_type}/{s.id}", subset(s.body or b"", query.summary, query.elements),
              {"search": {"mode": "match"}})
        for s in page.items if visible(s)
    ]
    entries += [
        Entry(f"{ctx.base}/{s.resource_type}/{s.id}", s.body, {"search": {"mode": "include"}})
        for s in page.included if visible(s)
    ]
    issues = [OutcomeIssue("warning", "not-supported", f"Unknown or unsupported search parameter '{n}' was ignored")
              for n in query.ignored]
    if page.include_capped:
        issues.append(OutcomeIssue("warning", "too-costly",
                                   f"Included resources were capped at {ctx.settings.max_include}"))
    if issues:
        entries.append(Entry(None, jsonio.dumps(operation_outcome(issues)), {"search": {"mode": "outcome"}}))
    body = assemble("searchset", last_updated=now_instant(), total=page.total, links=links, entries=entries)
    if req.fmt.kind == "json" and not req.fmt.pretty:
        return FhirResponse(200, body, req.fmt.content_type)
    return FhirResponse(200, render_stored(body, req.fmt), req.fmt.content_type)


def compartment_search(ctx: Context, req: FhirRequest, owner_type: str, owner_id: str,
                       resource_type: str) -> FhirResponse:
    require_served_type(resource_type)
    return search(ctx, req, resource_type, compartment=(owner_type, owner_id))
