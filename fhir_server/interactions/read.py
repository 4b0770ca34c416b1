"""read and vread (R4 http.html#read, #vread), with If-None-Match and If-Modified-Since."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

from fhir_server.errors import FhirError
from fhir_server.http.negotiation import render_stored
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse, resource_headers
from fhir_server.storage.base import StoredResource


def _gone(stored: StoredResource) -> FhirError:
    return FhirError(
        410, f"Resource {stored.resource_type}/{stored.id} was deleted (version {stored.version})",
        code="deleted", headers={"ETag": stored.etag},
    )


def _not_modified(req: FhirRequest, stored: StoredResource) -> bool:
    inm = req.header("if-none-match")
    if inm is not None:
        tags = {t.strip() for t in inm.split(",")}
        return "*" in tags or stored.etag in tags or f'"{stored.version}"' in tags
    ims = req.header("if-modified-since")
    if ims is not None:
        try:
            since = parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False  # RFC 9110: an invalid date is ignored
        return stored.last_updated_ms // 1000 <= int(since)
    return False


def _respond(req: FhirRequest, stored: StoredResource) -> FhirResponse:
    headers = resource_headers(stored)
    if _not_modified(req, stored):
        return FhirResponse(304, b"", None, headers)
    assert stored.body is not None
    return FhirResponse(200, render_stored(stored.body, req.fmt), req.fmt.content_type, headers)


def _check(ctx: Context, req: FhirRequest, stored: StoredResource) -> None:
    """403 unless the caller may see this resource.  A deleted version has no content to judge,
    so the version before the delete decides: "gone" is itself a fact about the resource."""
    policy = req.policy
    if policy is None:
        return
    judged = stored
    if stored.deleted and stored.version > 1:
        before = ctx.backend.vread(stored.resource_type, stored.id, stored.version - 1)
        judged = before if before is not None else stored
    if not policy.visible(judged):
        raise FhirError(403, f"{stored.resource_type}/{stored.id} is outside what the granted scopes allow",
                        code="forbidden")


def read(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    if req.policy is not None:
        req.policy.require("r", resource_type)
    stored = ctx.backend.read(resource_type, id)
    if stored is None:
        raise FhirError(404, f"Resource {resource_type}/{id} is not known", code="not-found")
    _check(ctx, req, stored)
    if stored.deleted:
        raise _gone(stored)
    return _respond(req, stored)


def vread(ctx: Context, req: FhirRequest, resource_type: str, id: str, version: str) -> FhirResponse:
    try:
        vid = int(version)
    except ValueError:
        raise FhirError(404, f"Version '{version}' of {resource_type}/{id} is not known", code="not-found") from None
    if req.policy is not None:
        req.policy.require("r", resource_type)
    stored = ctx.backend.vread(resource_type, id, vid)
    if stored is None:
        raise FhirError(404, f"Version {version} of {resource_type}/{id} is not known", code="not-found")
    _check(ctx, req, stored)
    if stored.deleted:
        raise _gone(stored)
    return _respond(req, stored)
