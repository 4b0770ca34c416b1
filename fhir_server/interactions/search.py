"""search for a type and the whole system (R4 http.html#search), Bundles assembled from stored bytes."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fhir_server.errors import FhirError, OutcomeIssue, operation_outcome
from fhir_server.http.negotiation import render_stored
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse
from fhir_server.interactions.paging import format_params, page_links
from fhir_server.model import jsonio
from fhir_server.model.bundle import Entry, assemble
from fhir_server.model.instant import now_instant
from fhir_server.model.registry import served_types
from fhir_server.search.parse import parse_search


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


def search(ctx: Context, req: FhirRequest, resource_type: str | None = None) -> FhirResponse:
    types = [resource_type] if resource_type else served_types()
    query = parse_search(
        types,
        _params(req),
        default_count=ctx.settings.default_count,
        max_count=ctx.settings.max_count,
        strict=req.prefer().get("handling") == "strict",
        system=resource_type is None,
    )
    page = ctx.backend.search(query)
    url = f"{ctx.base}/{resource_type}" if resource_type else ctx.base
    links = page_links(url, query.link_params, query.cursor, page.next_cursor, format_params(req.query))
    entries = [
        Entry(f"{ctx.base}/{s.resource_type}/{s.id}", s.body, {"search": {"mode": "match"}}) for s in page.items
    ]
    if query.ignored:
        oo = operation_outcome(
            [OutcomeIssue("warning", "not-supported", f"Unknown search parameter '{n}' was ignored")
             for n in query.ignored]
        )
        entries.append(Entry(None, jsonio.dumps(oo), {"search": {"mode": "outcome"}}))
    body = assemble("searchset", last_updated=now_instant(), total=page.total, links=links, entries=entries)
    if req.fmt.kind == "json" and not req.fmt.pretty:
        return FhirResponse(200, body, req.fmt.content_type)
    return FhirResponse(200, render_stored(body, req.fmt), req.fmt.content_type)
