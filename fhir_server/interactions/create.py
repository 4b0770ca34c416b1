"""create (R4 http.html#create), including conditional create with If-None-Exist."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.errors import FhirError
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import (
    Context,
    FhirResponse,
    WriteResult,
    parse_resource,
    result_response,
    stamp,
)
from fhir_server.interactions.conditional import criteria, describe
from fhir_server.storage.base import MultipleMatches, WriteRequest

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy


def create_resource(ctx: Context, resource_type: str, resource: dict[str, Any], *,
                    if_none_exist: str | None = None, id: str | None = None,
                    policy: AccessPolicy | None = None) -> WriteResult:
    """Create a validated resource (``id``: one the caller assigned, e.g. a transaction's)."""
    if policy is not None:
        policy.require_resource(resource_type, resource, "c")
    condition = (criteria(ctx, resource_type, if_none_exist, "If-None-Exist", policy)
                 if if_none_exist is not None else None)
    try:
        outcome = ctx.backend.create(WriteRequest(resource_type, resource, id=id, if_none_exist=condition), stamp)
    except MultipleMatches:
        assert condition is not None
        raise FhirError(
            412, f"If-None-Exist '{describe(condition)}' matched several resources; nothing was created",
            code="multiple-matches",
        ) from None
    stored = outcome.resource
    if outcome.existing:
        return WriteResult(200, stored, f"A matching resource {resource_type}/{stored.id} exists; nothing was created")
    return WriteResult(201, stored, f"Created {resource_type}/{stored.id}")


def create(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    resource = parse_resource(ctx, req, resource_type)
    result = create_resource(ctx, resource_type, resource, if_none_exist=req.header("if-none-exist"),
                             policy=req.policy)
    return result_response(ctx, req, result)
