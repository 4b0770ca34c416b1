"""$validate (R4 resource-operation-validate): POST [type]/$validate and [type]/[id]/$validate.

The body is the resource itself or a Parameters resource with ``resource``, ``mode``
(create | update | delete) and ``profile``.  The answer is always 200 with an OperationOutcome:
problems are the outcome's issues, not HTTP errors.  Validation is what a write would do
(structure, then every known profile the resource claims, plus the one asked for).
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.http.negotiation import parse_body, render_dict
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse
from fhir_server.interactions.conformance import declared_profiles, profiles_to_check, validator
from fhir_server.model import jsonio
from fhir_server.validation.issues import ProfileIssue, operation_outcome

MODES = ("create", "update", "delete")


def _arguments(ctx: Context, req: FhirRequest) -> tuple[dict[str, Any] | None, str, list[str]]:
    """(resource, mode, extra profiles) from the body and the query string."""
    mode = req.param("mode") or "create"
    profiles = [v for k, v in req.query if k == "profile"]
    if not req.body.strip():
        return None, mode, profiles
    body = parse_body(req.header("content-type"), req.body, xml_max_depth=ctx.settings.xml_max_depth)
    if not isinstance(body, dict):
        raise FhirError(400, "The body of $validate must be a resource or a Parameters resource", code="structure")
    if body.get("resourceType") != "Parameters":
        return body, mode, profiles
    resource = None
    for p in body.get("parameter", []) if isinstance(body.get("parameter"), list) else []:
        name = p.get("name") if isinstance(p, dict) else None
        if name == "resource" and isinstance(p.get("resource"), dict):
            resource = p["resource"]
        elif name == "mode":
            mode = str(p.get("valueCode", p.get("valueString", "")))
        elif name == "profile":
            profiles.append(str(p.get("valueUri", p.get("valueCanonical", p.get("valueString", "")))))
    return resource, mode, profiles


def validate(ctx: Context, req: FhirRequest, resource_type: str, id: str | None = None) -> FhirResponse:
    resource, mode, extra = _arguments(ctx, req)
    if mode not in MODES:
        raise FhirError(400, f"mode '{mode}' is not one of {', '.join(MODES)}", code="invalid")
    issues: list[ProfileIssue] = []
    if mode == "delete":
        if id is None:
            raise FhirError(400, "mode=delete validates an existing resource: POST [type]/[id]/$validate",
                            code="invalid")
        stored = ctx.backend.read(resource_type, id)
        if stored is None or stored.deleted:
            issues.append(ProfileIssue("error", "not-found", f"{resource_type}/{id} does not exist", ""))
        return _answer(req, issues)
    if resource is None:
        if id is None:
            raise FhirError(400, "$validate needs the resource to validate in the body", code="required")
        stored = ctx.backend.read(resource_type, id)
        if stored is None or stored.deleted or stored.body is None:
            raise FhirError(404, f"Resource {resource_type}/{id} is not known", code="not-found")
        resource = jsonio.loads(stored.body)
    if resource.get("resourceType") != resource_type:
        issues.append(ProfileIssue("error", "invalid", f"resourceType '{resource.get('resourceType')}' does not "
                                   f"match '{resource_type}'", "resourceType"))
        return _answer(req, issues)
    if id is not None and resource.get("id") is not None and resource.get("id") != id:
        issues.append(ProfileIssue("error", "invalid", f"The resource's id '{resource.get('id')}' differs from "
                                   f"{resource_type}/{id} in the URL", f"{resource_type}.id"))
    elif mode == "update":
        if id is not None and resource.get("id") != id:
            issues.append(ProfileIssue("error", "invalid", f"An update of {resource_type}/{id} needs the resource "
                                       "to carry that id", f"{resource_type}.id"))
        elif id is None and resource.get("id") is None:
            issues.append(ProfileIssue("error", "required", "An update needs the resource's id", f"{resource_type}.id"))
    v = validator()
    for url in extra:
        if not v.known(url):
            issues.append(ProfileIssue("error", "not-supported", f"Profile '{url}' is not known to this server", ""))
    try:
        profiles = profiles_to_check(ctx.settings, resource_type, resource)
    except FhirError as exc:  # a refused or missing profile is an issue of this validation, not an HTTP error
        issues.extend(ProfileIssue(i.severity, i.code, i.diagnostics, i.expression[0] if i.expression else "")
                      for i in exc.issues)
        profiles = [p for p in declared_profiles(resource) if v.known(p)]
    wanted = list(dict.fromkeys([*profiles, *(u for u in extra if v.known(u))]))
    issues.extend(v.validate(resource, wanted))
    return _answer(req, issues)


def _answer(req: FhirRequest, issues: list[ProfileIssue]) -> FhirResponse:
    return FhirResponse(200, render_dict(operation_outcome(issues), req.fmt), req.fmt.content_type)
