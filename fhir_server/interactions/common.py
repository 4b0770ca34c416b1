"""What every interaction shares: the context, the response type, validation and headers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fhir_server.config import Settings
from fhir_server.errors import FhirError, OutcomeIssue, operation_outcome
from fhir_server.http.negotiation import parse_body, render_dict, render_stored
from fhir_server.http.request import FhirRequest
from fhir_server.model import jsonio
from fhir_server.model.bundle import http_date
from fhir_server.model.validate import validate_resource
from fhir_server.storage.base import Backend, StoredResource

if TYPE_CHECKING:
    from fhir_server.auth.services import AuthServices
    from fhir_server.bulk.jobs import ExportStore
    from fhir_server.bulk.worker import ExportWorker


@dataclass(slots=True)
class Context:
    settings: Settings
    backend: Backend
    base: str
    capability: dict[str, Any] = field(default_factory=dict)
    auth: AuthServices | None = None  # set at startup when FHIR_AUTH=smart
    exports: ExportStore | None = None  # bulk export jobs (SQL backends), set at startup
    export_worker: ExportWorker | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did, before it becomes an HTTP response or a Bundle response entry."""

    status: int  # 200 | 201
    stored: StoredResource | None  # None: a delete that found nothing (or several things)
    message: str
    outcome_code: str = "informational"  # IssueType of the message when it is the response
    unchanged: bool = False  # an upsert found the same content stored and wrote nothing


@dataclass(slots=True)
class FhirResponse:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    # A large body sent as it is read (bulk export files); ``body`` is then unused and
    # ``length`` gives the Content-Length.
    stream: Iterator[bytes] | None = None
    length: int = 0


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
    return check_resource(data, resource_type, ctx)


def check_resource(data: Any, resource_type: str, ctx: Context | None = None) -> dict[str, Any]:
    """Validate decoded JSON as a resource of ``resource_type``: 400 with every structural problem
    found; with ``ctx`` (a resource about to be written) also its profiles, 422 on their errors."""
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
    if ctx is not None:
        from fhir_server.interactions.conformance import check_profiles

        check_profiles(ctx.settings, resource_type, data, ctx.backend)
    return data


def outcome_body(req: FhirRequest, severity: str, code: str, diagnostics: str) -> bytes:
    return render_dict(operation_outcome([OutcomeIssue(severity, code, diagnostics)]), req.fmt)


def resource_headers(stored: StoredResource) -> list[tuple[str, str]]:
    return [("ETag", stored.etag), ("Last-Modified", http_date(stored.last_updated_ms))]


def location(base: str, stored: StoredResource) -> str:
    return f"{base}/{stored.resource_type}/{stored.id}/_history/{stored.version}"


def result_response(ctx: Context, req: FhirRequest, result: WriteResult) -> FhirResponse:
    if result.stored is None:
        return FhirResponse(result.status, outcome_body(req, "information", result.outcome_code, result.message),
                            req.fmt.content_type)
    if result.stored.deleted:
        return FhirResponse(result.status, outcome_body(req, "information", "informational", result.message),
                            req.fmt.content_type, [("ETag", result.stored.etag)])
    return write_response(ctx, req, result.stored, result.status, result.message)


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
