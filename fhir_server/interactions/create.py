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
from fhir_server.storage.base import MultipleMatches, WriteOutcome, WriteRequest

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy


def create_resource(ctx: Context, resource_type: str, resource: dict[str, Any], *,
                    if_none_exist: str | None = None, id: str | None = None,
                    policy: AccessPolicy | None = None) -> WriteResult:
    """Create a validated resource (``id``: one the caller assigned, e.g. a transaction's)."""
    write = _write_request(ctx, resource_type, resource, if_none_exist, id, policy)
    try:
        outcome = ctx.backend.create(write, stamp)
    except MultipleMatches:
        raise _several(write) from None
    return _result(outcome)


def create(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    resource = parse_resource(ctx, req, resource_type)
    result = create_resource(ctx, resource_type, resource, if_none_exist=req.header("if-none-exist"),
                             policy=req.policy)
    return result_response(ctx, req, result)


async def create_async(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    """``create`` on the event loop, for a backend with ``async_writes``: the loop validates and
    awaits the backend's writer, and no thread is parked per request."""
    resource = parse_resource(ctx, req, resource_type)
    write = _write_request(ctx, resource_type, resource, req.header("if-none-exist"), None, req.policy)
    try:
        outcome = await ctx.backend.create_async(write, stamp)
    except MultipleMatches:
        raise _several(write) from None
    return result_response(ctx, req, _result(outcome))


def _write_request(ctx: Context, resource_type: str, resource: dict[str, Any], if_none_exist: str | None,
                   id: str | None, policy: AccessPolicy | None) -> WriteRequest:
    if policy is not None:
        policy.require_resource(resource_type, resource, "c")
    condition = (criteria(ctx, resource_type, if_none_exist, "If-None-Exist", policy)
                 if if_none_exist is not None else None)
    return WriteRequest(resource_type, resource, id=id, if_none_exist=condition)


def _several(write: WriteRequest) -> FhirError:
    assert write.if_none_exist is not None
    return FhirError(
        412, f"If-None-Exist '{describe(write.if_none_exist)}' matched several resources; nothing was created",
        code="multiple-matches",
    )


def _result(outcome: WriteOutcome) -> WriteResult:
    stored = outcome.resource
    if outcome.existing:
        return WriteResult(200, stored, f"A matching resource {stored.resource_type}/{stored.id} exists; "
                                        "nothing was created")
    return WriteResult(201, stored, f"Created {stored.resource_type}/{stored.id}")
