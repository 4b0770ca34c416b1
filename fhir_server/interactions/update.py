"""update (R4 http.html#update): PUT with the client's id, update-as-create, If-Match."""

from __future__ import annotations

from fhir_server.errors import FhirError, OutcomeIssue
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse, parse_resource, stamp, write_response
from fhir_server.model.facts import get_facts
from fhir_server.storage.base import VersionConflict, WriteRequest


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    try:
        return int(tag)
    except ValueError:
        raise FhirError(400, f"If-Match must be a version ETag such as W/\"3\", got '{value}'",
                        code="invalid") from None


def update(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    id_regex = get_facts().primitives["id"].regex
    if id_regex is not None and not id_regex.fullmatch(id):
        raise FhirError(400, f"'{id}' is not a valid resource id", code="invalid")
    resource = parse_resource(ctx, req, resource_type)
    body_id = resource.get("id")
    if body_id is None:
        raise FhirError(400, [OutcomeIssue("error", "required",
                                           "The resource in an update must carry an id equal to the URL's id",
                                           (f"{resource_type}.id",))])
    if body_id != id:
        raise FhirError(400, [OutcomeIssue("error", "invalid",
                                           f"The id '{body_id}' in the body does not match '{id}' in the URL",
                                           (f"{resource_type}.id",))])
    if_match = parse_if_match(req.header("if-match"))
    try:
        outcome = ctx.backend.update(WriteRequest(resource_type, resource, id=id, if_match=if_match), stamp)
    except VersionConflict as exc:
        current = "does not exist" if exc.current is None else f"is at version {exc.current}"
        raise FhirError(412, f"If-Match version {if_match} is stale: {resource_type}/{id} {current}",
                        code="conflict") from None
    stored = outcome.resource
    if outcome.created:
        return write_response(ctx, req, stored, 201, f"Created {resource_type}/{id}")
    return write_response(ctx, req, stored, 200, f"Updated {resource_type}/{id} to version {stored.version}")
