"""delete (R4 http.html#delete): a logical delete that leaves the history in place."""

from __future__ import annotations

from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse, outcome_body


def delete(ctx: Context, req: FhirRequest, resource_type: str, id: str) -> FhirResponse:
    stored = ctx.backend.delete(resource_type, id)
    if stored is None:
        # Deleting what is absent or already deleted changes nothing (http.html#delete allows 200).
        body = outcome_body(req, "information", "not-found",
                            f"{resource_type}/{id} does not exist or is already deleted; nothing changed")
        return FhirResponse(200, body, req.fmt.content_type)
    body = outcome_body(req, "information", "informational",
                        f"Deleted {resource_type}/{id} (version {stored.version})")
    return FhirResponse(200, body, req.fmt.content_type, [("ETag", stored.etag)])
