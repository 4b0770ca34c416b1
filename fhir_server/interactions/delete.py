"""delete (R4 http.html#delete): a logical delete that leaves the history in place; and
conditional delete (DELETE [type]?criteria, http.html#cond-delete)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.errors import FhirError
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse, WriteResult, result_response
from fhir_server.interactions.conditional import criteria, describe, find
from fhir_server.interactions.update import parse_if_match, stale
from fhir_server.model import jsonio
from fhir_server.storage.base import VersionConflict

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy


def delete_resource(ctx: Context, resource_type: str, id: str, *, if_match: int | None = None,
                    policy: AccessPolicy | None = None) -> WriteResult:
    if policy is not None:
        policy.require("d", resource_type)
        current = ctx.backend.read(resource_type, id)
        if current is not None and not current.deleted and current.body is not None:
            policy.require_resource(resource_type, jsonio.loads(current.body), "d")
    try:
        stored = ctx.backend.delete(resource_type, id, if_match)
    except VersionConflict as exc:
        raise stale(resource_type, id, if_match, exc) from None
    if stored is None:
        # Deleting what is absent or already deleted changes nothing (http.html#delete allows 200).
        return WriteResult(200, None, f"{resource_type}/{id} does not exist or is already deleted; nothing changed",
                           "not-found")
    return WriteResult(200, stored, f"Deleted {resource_type}/{id} (version {stored.version})")


def conditional_delete_resource(ctx: Context, resource_type: str, params: list[tuple[str, str]] | str,
                                policy: AccessPolicy | None = None) -> WriteResult:
    """Delete what the criteria match: one; or all, up to a cap, when "multiple" is enabled."""
    if policy is not None:
        policy.require("d", resource_type)
    query = criteria(ctx, resource_type, params, "Conditional delete", policy)
    multiple = ctx.settings.conditional_delete == "multiple"
    cap = ctx.settings.conditional_delete_max if multiple else 1
    with ctx.backend.transaction():
        found = find(ctx, query, cap + 1, lock=True)
        if len(found) > cap:
            why = (f"more than {cap} resources (the limit of a conditional delete)" if multiple
                   else "more than one resource, and this server deletes one at a time")
            raise FhirError(412, f"Conditional delete '{describe(query)}' matched {why}", code="multiple-matches")
        if not found:
            return WriteResult(200, None, f"Conditional delete '{describe(query)}' matched nothing; nothing changed",
                               "not-found")
        last = None
        for s in found:
            if policy is not None and s.body is not None:
                policy.require_resource(s.resource_type, jsonio.loads(s.body), "d")
            last = ctx.backend.delete(s.resource_type, s.id)
    assert last is not None
    if len(found) == 1:
        return WriteResult(200, last, f"Deleted {resource_type}/{last.id} (version {last.version})")
    return WriteResult(200, None, f"Deleted {len(found)} {resource_type} resources matching '{describe(query)}'")


def delete(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    result = delete_resource(ctx, resource_type, id, if_match=parse_if_match(req.header("if-match")),
                             policy=req.policy)
    return result_response(ctx, req, result)


def conditional_delete(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    return result_response(ctx, req, conditional_delete_resource(ctx, resource_type, req.query, req.policy))
