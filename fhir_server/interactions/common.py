"""What every interaction shares: the context, the response type, validation and headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_server.config import Settings
from fhir_server.errors import FhirError, OutcomeIssue, operation_outcome
from fhir_server.http.negotiation import parse_body, render_dict, render_stored
from fhir_server.http.request import FhirRequest
from fhir_server.model import jsonio
from fhir_server.model.bundle import http_date
from fhir_server.model.validate import validate_resource
from fhir_server.storage.base import Backend, StoredResource


@dataclass(slots=True)
class Context:
    settings: Settings
    backend: Backend
    base: str
    capability: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class FhirResponse:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def stamp(resource: dict[str, Any], id: str, version: int, last_updated: str) -> bytes:
    """The stored form: the client's validated JSON with the server's id and meta."""
    meta = resource.get("meta")
    new_meta: dict[str, Any] = {"versionId": str(version), "lastUpdated": last_updated}
    if isinstance(meta, dict):
        for k, v in meta.items():
            if k not in new_meta:
                new_meta[k] = v
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": id, "meta": new_meta}
    for k, v in resource.items():
        if k not in out:
            out[k] = v
    return jsonio.dumps(out)


def parse_resource(ctx: Context, req: FhirRequest, resource_type: str) -> dict[str, Any]:
    """Decode and validate a request body as a resource of ``resource_type`` (400 on any error)."""
    data = parse_body(req.header("content-type"), req.body, xml_max_depth=ctx.settings.xml_max_depth)
    if not isinstance(data, dict):
        raise FhirError(400, [OutcomeIssue("error", "structure", "The body must be a JSON object holding a resource")])
    found = data.get("resourceType")
    if found != resource_type:
        raise FhirError(
            400,
            [OutcomeIssue("error", "invalid",
                          f"resourceType '{found}' in the body does not match '{resource_type}' in the URL",
                          ("resourceType",))],
        )
    problems = validate_resource(data, resource_type)
    errors = [p for p in problems if p.severity in ("error", "fatal")]
    if errors:
        raise FhirError(
            400,
            [OutcomeIssue(p.severity, p.code, p.diagnostics, (p.expression,) if p.expression else ())
             for p in problems if p.severity != "information"],
        )
    return data


def outcome_body(req: FhirRequest, severity: str, code: str, diagnostics: str) -> bytes:
    return render_dict(operation_outcome([OutcomeIssue(severity, code, diagnostics)]), req.fmt)


def resource_headers(stored: StoredResource) -> list[tuple[str, str]]:
    return [("ETag", stored.etag), ("Last-Modified", http_date(stored.last_updated_ms))]


def location(base: str, stored: StoredResource) -> str:
    return f"{base}/{stored.resource_type}/{stored.id}/_history/{stored.version}"


def write_response(
    ctx: Context, req: FhirRequest, stored: StoredResource, status: int, message: str
) -> FhirResponse:
    """Honour ``Prefer: return=minimal | representation | OperationOutcome`` for a write."""
    headers = resource_headers(stored)
    headers.append(("Location", location(ctx.base, stored)))
    preference = req.prefer().get("return", "representation")
    if preference == "minimal":
        return FhirResponse(status, b"", None, headers)
    if preference.lower() == "operationoutcome":
        return FhirResponse(status, outcome_body(req, "information", "informational", message),
                            req.fmt.content_type, headers)
    assert stored.body is not None
    return FhirResponse(status, render_stored(stored.body, req.fmt), req.fmt.content_type, headers)
