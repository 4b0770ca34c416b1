"""create (R4 http.html#create), including conditional create with If-None-Exist."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fhir_server.errors import FhirError
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse, parse_resource, stamp, write_response
from fhir_server.search.parse import parse_search
from fhir_server.storage.base import MultipleMatches, WriteRequest


def create(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    resource = parse_resource(ctx, req, resource_type)
    condition = None
    header = req.header("if-none-exist")
    if header is not None:
        params = parse_qsl(header.split("?", 1)[1] if "?" in header else header, keep_blank_values=True)
        if not params:
            raise FhirError(400, "If-None-Exist must hold search parameters, e.g. identifier=system|value",
                            code="invalid")
        # Strict: a criterion the engine cannot evaluate must not silently match everything.
        condition = parse_search([resource_type], params, default_count=2, max_count=2, strict=True,
                                 base_url=ctx.base)
        if not condition.conditions:
            raise FhirError(400, f"If-None-Exist '{header}' has no search criteria", code="invalid")
    try:
        outcome = ctx.backend.create(WriteRequest(resource_type, resource, if_none_exist=condition), stamp)
    except MultipleMatches as exc:
        raise FhirError(
            412, f"If-None-Exist '{header}' matched {exc.count} resources; the create was not performed",
            code="multiple-matches",
        ) from None
    stored = outcome.resource
    if outcome.existing:
        return write_response(ctx, req, stored, 200,
                              f"A matching resource {resource_type}/{stored.id} exists; nothing was created")
    return write_response(ctx, req, stored, 201, f"Created {resource_type}/{stored.id}")
