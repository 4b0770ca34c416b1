"""capabilities (GET [base]/metadata): the CapabilityStatement, rendered once per format."""

from __future__ import annotations

from fhir_server.http.negotiation import render_dict
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, FhirResponse


def capabilities(ctx: Context, req: FhirRequest) -> FhirResponse:
    mode = req.param("mode")
    if mode not in (None, "full"):
        from fhir_server.errors import FhirError

        raise FhirError(400, f"mode={mode} is not supported; only the full CapabilityStatement is served",
                        code="not-supported")
    return FhirResponse(200, render_dict(ctx.capability, req.fmt), req.fmt.content_type)
