"""patch (R4 http.html#patch): JSON Patch and FHIRPath Patch, validated like an update.

The resource is locked from reading the current version to writing the patched one, so
concurrent patches apply one after the other; If-Match pins the version a client patched."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from fhir_server.errors import FhirError, OutcomeIssue
from fhir_server.http.negotiation import parse_body
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import (
    Context,
    FhirResponse,
    WriteResult,
    check_resource,
    result_response,
    stamp,
)
from fhir_server.interactions.conditional import criteria, find_one
from fhir_server.interactions.update import parse_if_match, stale
from fhir_server.model import jsonio
from fhir_server.patch.fhirpath_patch import apply_fhirpath_patch
from fhir_server.patch.json_patch import apply_json_patch
from fhir_server.storage.base import VersionConflict, WriteRequest

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy

JSON_PATCH_TYPES = ("application/json-patch+json",)


class Patch:
    """A parsed patch document: ``kind`` "json" (RFC 6902 operations) or "fhirpath" (Parameters)."""

    __slots__ = ("kind", "document")

    def __init__(self, kind: str, document: Any) -> None:
        self.kind = kind
        self.document = document

    def apply(self, resource: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "json":
            return apply_json_patch(resource, self.document)
        return apply_fhirpath_patch(resource, self.document)


def patch_from_request(ctx: Context, req: FhirRequest) -> Patch:
    ct = (req.header("content-type") or "").split(";", 1)[0].strip().lower()
    if ct in JSON_PATCH_TYPES:
        try:
            return Patch("json", jsonio.loads(req.body))
        except (ValueError, UnicodeDecodeError) as exc:
            raise FhirError(400, f"Malformed JSON Patch document: {exc}", code="structure") from None
    if not ct:
        raise FhirError(415, "PATCH needs a Content-Type: application/json-patch+json (JSON Patch) or "
                        "application/fhir+json / application/fhir+xml with a Parameters body (FHIRPath Patch)",
                        code="not-supported")
    data = parse_body(ct, req.body, xml_max_depth=ctx.settings.xml_max_depth)
    return patch_from_resource(data)


def patch_from_resource(data: Any) -> Patch:
    """A patch carried as a resource: a Parameters (FHIRPath Patch) or, inside a Bundle, a Binary
    holding a JSON Patch document."""
    kind = data.get("resourceType") if isinstance(data, dict) else None
    if kind == "Parameters":
        return Patch("fhirpath", check_resource(data, "Parameters"))
    if kind == "Binary":
        ct = str(data.get("contentType", "")).split(";", 1)[0].strip().lower()
        if ct not in JSON_PATCH_TYPES:
            raise FhirError(415, f"A Binary patch must have contentType application/json-patch+json, not '{ct}'",
                            code="not-supported")
        try:
            return Patch("json", jsonio.loads(base64.b64decode(str(data.get("data", "")), validate=True)))
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise FhirError(400, f"The Binary does not hold a base64 JSON Patch document: {exc}",
                            code="structure") from None
    raise FhirError(400, "A FHIRPath Patch body must be a Parameters resource", code="invalid")


def patch_resource(ctx: Context, resource_type: str, id: str, patch: Patch, *,
                   if_match: int | None = None, policy: AccessPolicy | None = None) -> WriteResult:
    # The resource stays locked from the read to the write: concurrent patches queue, and each
    # applies to the version the previous one wrote (none is refused or lost).
    with ctx.backend.transaction():
        ctx.backend.lock_resources([(resource_type, id)])
        current = ctx.backend.read(resource_type, id)
        if current is None:
            raise FhirError(404, f"Resource {resource_type}/{id} is not known", code="not-found")
        if current.deleted or current.body is None:
            raise FhirError(410, f"Resource {resource_type}/{id} was deleted (version {current.version})",
                            code="deleted")
        if if_match is not None and if_match != current.version:
            raise stale(resource_type, id, if_match, VersionConflict(current.version))
        original = jsonio.loads(current.body)
        if policy is not None:
            policy.require_resource(resource_type, original, "u")
        patched = patch.apply(original)
        if patched.get("resourceType") != resource_type:
            raise FhirError(400, [OutcomeIssue("error", "invalid", "A patch may not change resourceType",
                                               ("resourceType",))])
        if patched.get("id") != id:
            raise FhirError(400, [OutcomeIssue("error", "invalid",
                                               f"A patch may not change the id of {resource_type}/{id}",
                                               (f"{resource_type}.id",))])
        check_resource(patched, resource_type, ctx)
        if policy is not None:
            policy.require_resource(resource_type, patched, "u")
        try:
            outcome = ctx.backend.update(WriteRequest(resource_type, patched, id=id, if_match=current.version), stamp)
        except VersionConflict as exc:
            raise stale(resource_type, id, if_match, exc) from None
    stored = outcome.resource
    return WriteResult(200, stored, f"Patched {resource_type}/{id} to version {stored.version}")


def conditional_patch_resource(ctx: Context, resource_type: str, params: list[tuple[str, str]] | str,
                               patch: Patch, *, if_match: int | None = None,
                               policy: AccessPolicy | None = None) -> WriteResult:
    query = criteria(ctx, resource_type, params, "Conditional patch", policy)
    target = find_one(ctx, query, "Conditional patch")
    return patch_resource(ctx, resource_type, target.id, patch, if_match=if_match, policy=policy)


def patch(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    doc = patch_from_request(ctx, req)
    result = patch_resource(ctx, resource_type, id, doc, if_match=parse_if_match(req.header("if-match")),
                            policy=req.policy)
    return result_response(ctx, req, result)


def conditional_patch(ctx: Context, req: FhirRequest, resource_type: str) -> FhirResponse:
    doc = patch_from_request(ctx, req)
    result = conditional_patch_resource(ctx, resource_type, req.query, doc,
                                        if_match=parse_if_match(req.header("if-match")), policy=req.policy)
    return result_response(ctx, req, result)
