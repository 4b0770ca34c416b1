"""update (R4 http.html#update): PUT with the client's id, update-as-create, If-Match, and
conditional update (PUT [type]?criteria, http.html#cond-update)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from fhir_server.errors import FhirError, OutcomeIssue
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import (
    Context,
    FhirResponse,
    WriteResult,
    parse_resource,
    result_response,
    stamp,
)
from fhir_server.interactions.conditional import criteria, describe, find
from fhir_server.model import jsonio
from fhir_server.model.facts import get_facts
from fhir_server.storage.base import VersionConflict, WriteOutcome, WriteRequest

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy


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


def check_id(id: str) -> None:
    id_regex = get_facts().primitives["id"].regex
    if id_regex is not None and not id_regex.fullmatch(id):
        raise FhirError(400, f"'{id}' is not a valid resource id", code="invalid")


def stale(resource_type: str, id: str, if_match: int | None, exc: VersionConflict) -> FhirError:
    current = "does not exist" if exc.current is None else f"is at version {exc.current}"
    return FhirError(412, f"If-Match version {if_match} is stale: {resource_type}/{id} {current}", code="conflict")


def update_resource(ctx: Context, resource_type: str, id: str, resource: dict[str, Any], *,
                    if_match: int | None = None, skip_unchanged: bool = False,
                    policy: AccessPolicy | None = None) -> WriteResult:
    """Write a validated resource as the new version of ``resource_type/id`` (or create it)."""
    write = _write_request(ctx, resource_type, id, resource, if_match, skip_unchanged, policy)
    try:
        outcome = ctx.backend.update(write, stamp)
    except VersionConflict as exc:
        raise stale(resource_type, id, if_match, exc) from None
    return _result(outcome)


def _write_request(ctx: Context, resource_type: str, id: str, resource: dict[str, Any], if_match: int | None,
                   skip_unchanged: bool, policy: AccessPolicy | None) -> WriteRequest:
    body_id = resource.get("id")
    if body_id is None:
        raise FhirError(400, [OutcomeIssue("error", "required",
                                           "The resource in an update must carry an id equal to the URL's id",
                                           (f"{resource_type}.id",))])
    if body_id != id:
        raise FhirError(400, [OutcomeIssue("error", "invalid",
                                           f"The id '{body_id}' in the body does not match '{id}' in the URL",
                                           (f"{resource_type}.id",))])
    if policy is not None:
        # Both the stored and the new content must be the caller's: no moving a resource into
        # or out of what the scopes allow.
        current = ctx.backend.read(resource_type, id)
        stored_body = jsonio.loads(current.body) if current is not None and current.body is not None else None
        policy.require_update(resource_type, stored_body, resource)
    return WriteRequest(resource_type, resource, id=id, if_match=if_match, skip_unchanged=skip_unchanged)


def _result(outcome: WriteOutcome) -> WriteResult:
    stored = outcome.resource
    name = f"{stored.resource_type}/{stored.id}"
    if outcome.existing:
        return WriteResult(200, stored, f"{name} is unchanged (version {stored.version})", unchanged=True)
    if outcome.created:
        return WriteResult(201, stored, f"Created {name}")
    return WriteResult(200, stored, f"Updated {name} to version {stored.version}")


def conditional_update_resource(ctx: Context, resource_type: str, params: list[tuple[str, str]] | str,
                                resource: dict[str, Any], *, if_match: int | None = None,
                                policy: AccessPolicy | None = None) -> WriteResult:
    """PUT [type]?criteria: no match creates, one match is updated, several are refused (412).

    The criteria stay locked from the search to the write, so two concurrent conditional updates
    with the same criteria cannot both create."""
    query = criteria(ctx, resource_type, params, "Conditional update", policy)
    with ctx.backend.transaction():
        found = find(ctx, query, lock=True)
        if len(found) > 1:
            raise FhirError(412, f"Conditional update '{describe(query)}' matched more than one resource",
                            code="multiple-matches")
        body_id = resource.get("id")
        if found:
            target = found[0].id
            if body_id is not None and body_id != target:
                raise FhirError(400, [OutcomeIssue(
                    "error", "invalid",
                    f"The id '{body_id}' in the body differs from the matching resource {resource_type}/{target}",
                    (f"{resource_type}.id",))])
        else:
            target = body_id if isinstance(body_id, str) else str(uuid.uuid4())
        return update_resource(ctx, resource_type, target, {**resource, "id": target}, if_match=if_match,
                               policy=policy)


def update(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    check_id(id)
    resource = parse_resource(ctx, req, resource_type)
    result = update_resource(ctx, resource_type, id, resource, if_match=parse_if_match(req.header("if-match")),
                             policy=req.policy)
    return result_response(ctx, req, result)


async def update_async(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    """``update`` on the event loop, for a backend with ``async_writes`` (see create_async)."""
    check_id(id)
    resource = parse_resource(ctx, req, resource_type)
    if_match = parse_if_match(req.header("if-match"))
    write = _write_request(ctx, resource_type, id, resource, if_match, False, req.policy)
    try:
        outcome = await ctx.backend.update_async(write, stamp)
    except VersionConflict as exc:
        raise stale(resource_type, id, if_match, exc) from None
    return result_response(ctx, req, _result(outcome))


def conditional_update(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    resource = parse_resource(ctx, req, resource_type)
    result = conditional_update_resource(ctx, resource_type, req.query, resource,
                                         if_match=parse_if_match(req.header("if-match")), policy=req.policy)
    return result_response(ctx, req, result)
