"""history for an instance, a type and the whole system (R4 http.html#history)."""

from __future__ import annotations

from fhir_server.errors import FhirError
from fhir_server.http.negotiation import render_stored
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse
from fhir_server.interactions.paging import format_params, page_links
from fhir_server.model.bundle import Entry, assemble, http_date
from fhir_server.model.instant import now_instant
from fhir_server.model.registry import served_types
from fhir_server.search.params.date import parse_date_value
from fhir_server.storage.base import HistoryEntry, HistoryQuery

_KNOWN = {"_count", "_since", "_at", "_cursor", "_format", "_pretty"}


def _entry(base: str, h: HistoryEntry) -> Entry:
    s = h.resource
    full_url = f"{base}/{s.resource_type}/{s.id}"
    url = s.resource_type if h.method == "POST" else f"{s.resource_type}/{s.id}"
    status = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}.get(h.method, "200 OK")
    if h.method == "PUT" and s.version == 1:
        status = "201 Created"
    return Entry(
        full_url,
        None if s.deleted else s.body,
        {
            "request": {"method": h.method, "url": url},
            "response": {"status": status, "etag": s.etag, "lastModified": s.last_updated},
        },
    )


def _authorise(req: FhirRequest, ctx: Context, resource_type: str | None, id: str | None) -> None:
    """Instance history needs read access to the resource; type and system history list versions
    of many resources, so they need search access and are refused to tokens whose access is
    restricted to a compartment or by granular scopes (a filtered history would lie in its
    totals and paging; such callers search instead)."""
    policy = req.policy
    if policy is None:
        return
    if id is not None:
        assert resource_type is not None
        policy.require("r", resource_type)
        current = ctx.backend.read(resource_type, id)
        if current is not None and not policy.visible(current):
            raise FhirError(403, f"{resource_type}/{id} is outside what the granted scopes allow", code="forbidden")
        return
    for rt in [resource_type] if resource_type is not None else served_types():
        policy.require("s", rt)
        if policy.type_condition(rt, "s") is not None:
            raise FhirError(403, f"History of {rt} across resources is not available to a token restricted to a "
                            "patient's compartment or by granular scopes; use search", code="forbidden")


def history(ctx: Context, req: FhirRequest, resource_type: str | None = None, id: str | None = None) -> FhirResponse:
    _authorise(req, ctx, resource_type, id)
    if resource_type is not None and id is not None and ctx.backend.read(resource_type, id) is None:
        raise FhirError(404, f"Resource {resource_type}/{id} is not known", code="not-found")
    q = HistoryQuery(resource_type=resource_type, id=id, count=ctx.settings.default_count)
    link_params: list[tuple[str, str]] = []
    for name, value in req.query:
        if name not in _KNOWN:
            if req.prefer().get("handling") == "strict":
                raise FhirError(400, f"Unknown parameter '{name}' for history", code="not-supported")
            continue
        if name == "_count":
            try:
                q.count = max(0, min(int(value), ctx.settings.history_max_count))
            except ValueError:
                raise FhirError(400, f"_count must be a non-negative integer, got '{value}'", code="invalid") from None
            link_params.append((name, str(q.count)))
        elif name == "_since":
            q.since_ms = parse_date_value(value, "_since").lo
            link_params.append((name, value))
        elif name == "_at":
            r = parse_date_value(value, "_at")
            q.at_ms = (r.lo, r.hi)
            link_params.append((name, value))
        elif name == "_cursor":
            q.cursor = value or None
    page = ctx.backend.history(q)
    if req.policy is not None and id is not None:
        # Every version shown must be one the caller may see (a resource may have moved between
        # compartments); judged on this page, the rest when its own page is asked for.
        for h in page.items:
            judged = h.resource
            if judged.deleted and judged.version > 1:
                judged = ctx.backend.vread(judged.resource_type, judged.id, judged.version - 1) or judged
            if not req.policy.visible(judged):
                raise FhirError(403, f"Version {h.resource.version} of {resource_type}/{id} is outside what the "
                                "granted scopes allow", code="forbidden")
    path = "/".join(p for p in (resource_type, id) if p)
    url = f"{ctx.base}/{path}/_history" if path else f"{ctx.base}/_history"
    links = page_links(url, link_params, q.cursor, page.next_cursor, format_params(req.query))
    body = assemble(
        "history",
        last_updated=now_instant(),
        total=page.total,
        links=links,
        entries=[_entry(ctx.base, h) for h in page.items],
    )
    headers: list[tuple[str, str]] = []
    if page.items:
        headers.append(("Last-Modified", http_date(max(h.resource.last_updated_ms for h in page.items))))
    if req.fmt.kind == "json" and not req.fmt.pretty:
        return FhirResponse(200, body, req.fmt.content_type, headers)
    return FhirResponse(200, render_stored(body, req.fmt), req.fmt.content_type, headers)



