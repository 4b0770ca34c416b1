"""The parameters of an operation invoked by POST with a Parameters body (R4 operations.html)."""

from __future__ import annotations

from fhir_server.errors import FhirError
from fhir_server.http.negotiation import parse_body
from fhir_server.http.request import FhirRequest
from fhir_server.interactions.common import Context, check_resource


def posted_parameters(ctx: Context, req: FhirRequest, operation: str) -> list[tuple[str, str]]:
    """(name, value) of each parameter: primitive values as text, references as their reference.

    An empty body has none; anything else that is not primitive is refused with 400."""
    if not req.body.strip():
        return []
    body = check_resource(parse_body(req.header("content-type"), req.body,
                                     xml_max_depth=ctx.settings.xml_max_depth), "Parameters")
    out: list[tuple[str, str]] = []
    for p in body.get("parameter", []):
        if "valueReference" in p:
            out.append((str(p.get("name")), str(p["valueReference"].get("reference", ""))))
            continue
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if value is None or isinstance(value, dict | list):
            raise FhirError(400, f"Parameter '{p.get('name')}' of {operation} needs a primitive value or a "
                            "reference", code="invalid")
        out.append((str(p.get("name")), str(value)))
    return out
