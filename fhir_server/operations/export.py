"""Bulk Data $export (FHIR Bulk Data Access IG v2.0.0): kick-off, status, cancel and download.

Kick-off only validates the request and queues a job in the database; a worker thread of any
server process runs it (fhir_server/bulk/worker.py).  The status URL, the manifest and the NDJSON
files are served by whichever process the client reaches.  With authorisation on, the job keeps
what the kick-off token allowed, only that client may poll or download, and every file needs a
token (``requiresAccessToken``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson

from fhir_server.bulk.jobs import ExportStore, JobRecord
from fhir_server.bulk.worker import compartment_params
from fhir_server.errors import FhirError, OutcomeIssue, operation_outcome
from fhir_server.http.negotiation import render_dict
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse
from fhir_server.model import jsonio
from fhir_server.model.facts import get_facts
from fhir_server.model.instant import now_ms
from fhir_server.model.registry import served_types
from fhir_server.operations.parameters import posted_parameters
from fhir_server.search.params.date import parse_date_value
from fhir_server.search.parse import parse_search

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
NDJSON_CT = "application/fhir+ndjson"
_IGNORED = {"_format", "_pretty"}
# Search result parameters have no meaning in a _typeFilter (it selects; it does not page or shape).
_RESULT_PARAMETERS = {"_include", "_revinclude", "_count", "_sort", "_summary", "_elements", "_total", "_contained",
                      "_containedType", "_cursor"}


def store_of(ctx: Context) -> ExportStore:
    store = getattr(ctx, "exports", None)
    if store is None:
        raise FhirError(501, "Bulk export needs a SQL database", code="not-supported")
    assert isinstance(store, ExportStore)
    return store


def _parameters(ctx: Context, req: FhirRequest) -> list[tuple[str, Any]]:
    params: list[tuple[str, Any]] = [(k, v) for k, v in req.query if k not in _IGNORED]
    if req.method == "POST":
        params += posted_parameters(ctx, req, "$export")
    return params


def _group_members(ctx: Context, group_id: str, req: FhirRequest) -> list[str]:
    group = ctx.backend.read("Group", group_id)
    if group is None:
        raise FhirError(404, f"Group/{group_id} is not known", code="not-found")
    if group.deleted or group.body is None:
        raise FhirError(410, f"Group/{group_id} was deleted", code="deleted")
    if req.policy is not None and not req.policy.visible(group):
        raise FhirError(403, f"Group/{group_id} is outside what the granted scopes allow", code="forbidden")
    members = []
    for m in jsonio.loads(group.body).get("member", []):
        ref = m.get("entity", {}).get("reference", "") if isinstance(m, dict) else ""
        if ref.startswith(f"{ctx.base}/"):
            ref = ref[len(ctx.base) + 1:]
        if ref.startswith("Patient/") and ref.count("/") == 1:
            members.append(ref.split("/", 1)[1])
    return members


def _types_in_scope(kind: str) -> list[str]:
    served = served_types()
    if kind == "system":
        return list(served)
    compartment = get_facts().compartments.get("Patient", {})
    types = [t for t in served if t == "Patient" or (t in compartment and compartment_params("Patient", t))]
    if kind == "group" and "Group" not in types:
        types.append("Group")
    return types


def kickoff(ctx: Context, req: FhirRequest, *target: str) -> FhirResponse:
    """GET/POST [base]/$export, [base]/Patient/$export, [base]/Group/[id]/$export."""
    store = store_of(ctx)
    if "respond-async" not in req.prefer():
        raise FhirError(400, "$export runs asynchronously: send 'Prefer: respond-async'", code="invalid")
    if req.fmt.kind != "json":
        raise FhirError(400, "$export answers in application/fhir+json only", code="not-supported")
    kind = "system" if not target else "patient" if target == ("Patient",) else "group"
    lenient = req.prefer().get("handling") == "lenient"
    types: list[str] = []
    type_filters: dict[str, list[str]] = {}
    since_ms: int | None = None
    patients: list[str] | None = None
    for name, value in _parameters(ctx, req):
        if name == "_outputFormat":
            # An unencoded "+" in a query string arrives as a space.
            if value.replace(" ", "+") not in OUTPUT_FORMATS:
                raise FhirError(400, f"_outputFormat '{value}' is not supported; use application/fhir+ndjson",
                                code="not-supported")
        elif name == "_since":
            since_ms = parse_date_value(value, "_since").lo
        elif name == "_type":
            for t in (v.strip() for v in value.split(",")):
                if t and t not in served_types():
                    raise FhirError(400, f"_type '{t}' is not a resource type this server exports", code="not-supported")
                if t and t not in types:
                    types.append(t)
        elif name == "_typeFilter":
            rt, sep, query = value.partition("?")
            if not sep or rt not in served_types():
                raise FhirError(400, f"_typeFilter '{value}' must be [type]?[search parameters] of a served type",
                                code="invalid")
            criteria = parse_qsl(query, keep_blank_values=True)
            shaping = sorted({k for k, _ in criteria if k in _RESULT_PARAMETERS})
            if shaping:
                raise FhirError(400, f"_typeFilter '{value}' may hold search criteria only, not {', '.join(shaping)}",
                                code="not-supported")
            parse_search([rt], criteria, default_count=1, max_count=1, strict=True, base_url=ctx.base)
            type_filters.setdefault(rt, []).append(query)
        elif name == "patient":
            if req.method != "POST" or kind == "system":
                raise FhirError(400, "'patient' is taken by POST Patient/$export and Group/[id]/$export only",
                                code="invalid")
            ref = str(value)
            if ref.startswith(ctx.base + "/"):
                ref = ref[len(ctx.base) + 1:]
            if not ref.startswith("Patient/") or ref.count("/") != 1:
                raise FhirError(400, f"patient '{value}' must be a Patient reference", code="invalid")
            pid = ref.split("/", 1)[1]
            found = ctx.backend.read("Patient", pid)
            if found is None or found.deleted:
                raise FhirError(400, f"patient '{value}' is not a Patient on this server", code="not-found")
            patients = [*(patients or []), pid]
        elif name in ("includeAssociatedData", "_elements"):
            raise FhirError(400, f"{name} is not supported by this server", code="not-supported")
        elif not lenient:
            raise FhirError(400, f"Unknown $export parameter '{name}'", code="not-supported")
    for rt in type_filters:
        if types and rt not in types:
            raise FhirError(400, f"_typeFilter names {rt}, which _type leaves out", code="invalid")
    group_id = target[1] if kind == "group" else None
    if group_id is not None:
        members = _group_members(ctx, group_id, req)
        patients = members if patients is None else [p for p in patients if p in members]
    policy = req.policy
    explicit = bool(types)
    if not types:
        types = _types_in_scope(kind)
    if policy is not None:
        forbidden = [t for t in types if not policy.can("r", t)]
        if explicit and forbidden:
            policy.require("r", forbidden[0])
        types = [t for t in types if t not in forbidden]
        if not types:
            raise FhirError(403, "The access token allows reading none of the resource types an export returns",
                            code="forbidden")
    principal = None
    if policy is not None:
        p = policy.principal
        principal = {"client_id": p.client_id, "subject": p.subject, "scope": str(p.scopes), "patient": p.patient,
                     "encounter": p.encounter, "fhir_user": p.fhir_user}
    request_url = ctx.base + "/" + "/".join(req.segments)
    if req.query:
        request_url += "?" + urlencode(req.query, safe="|,:/$")
    job_id = store.create(
        kind=kind, group_id=group_id, request_url=request_url,
        params={"types": types, "since_ms": since_ms, "type_filters": type_filters, "patients": patients},
        owner=principal["client_id"] if principal else None, principal=principal,
        retention_ms=ctx.settings.export_retention_seconds * 1000,
    )
    worker = getattr(ctx, "export_worker", None)
    if worker is not None:
        worker.wake()
    body = render_dict(operation_outcome([OutcomeIssue("information", "informational",
                                                       f"Export {job_id} accepted; poll the Content-Location URL")]),
                       req.fmt)
    return FhirResponse(202, body, req.fmt.content_type, [("Content-Location", f"{ctx.base}/_export/{job_id}")])


def _job_for(ctx: Context, req: FhirRequest, job_id: str) -> JobRecord:
    job = store_of(ctx).get(job_id)
    gone = job is None or job.status == "cancelled" or job.expires_ms <= now_ms()
    # Another client's job is answered like an unknown one: its existence is not disclosed.
    if gone or (req.policy is not None and job is not None and job.owner != req.policy.principal.client_id):
        raise FhirError(404, f"Export job {job_id} is not known (or was cancelled or has expired)", code="not-found")
    assert job is not None
    return job


def status(ctx: Context, req: FhirRequest, job_id: str) -> FhirResponse:
    job = _job_for(ctx, req, job_id)
    if job.status in ("queued", "running"):
        progress = job.progress or job.status
        return FhirResponse(202, b"", None, [("X-Progress", progress), ("Retry-After", "2")])
    if job.status == "failed":
        raise FhirError(500, f"Export {job.id} failed: {job.error}", code="exception")
    files = store_of(ctx).files(job.id)
    manifest = {
        "transactionTime": job.transaction_time,
        "request": job.request_url,
        "requiresAccessToken": ctx.auth is not None,
        "output": [{"type": f.resource_type, "url": f"{ctx.base}/_export/{job.id}/{f.id}.ndjson", "count": f.count}
                   for f in files if f.kind == "output"],
        "error": [{"type": "OperationOutcome", "url": f"{ctx.base}/_export/{job.id}/{f.id}.ndjson", "count": f.count}
                  for f in files if f.kind == "error"],
    }
    return FhirResponse(200, orjson.dumps(manifest), "application/json")


def cancel(ctx: Context, req: FhirRequest, job_id: str) -> FhirResponse:
    job = _job_for(ctx, req, job_id)
    store_of(ctx).cancel(job.id)
    body = render_dict(operation_outcome([OutcomeIssue("information", "informational",
                                                       f"Export {job.id} was cancelled and its files removed")]),
                       req.fmt)
    return FhirResponse(202, body, req.fmt.content_type)


def download(ctx: Context, req: FhirRequest, job_id: str, file_name: str) -> FhirResponse:
    job = _job_for(ctx, req, job_id)
    file_id = file_name.removesuffix(".ndjson")
    record = store_of(ctx).file(job.id, file_id) if job.status == "done" else None
    if record is None:
        raise FhirError(404, f"Export file {file_name} of job {job_id} is not known", code="not-found")
    if req.policy is not None:
        # The file is data of its type: the token that fetches it must still be allowed to read it.
        req.policy.require("r", record.resource_type)
    return FhirResponse(200, b"", NDJSON_CT, stream=store_of(ctx).chunks(record.id), length=record.size)
