"""Content negotiation in one place: _format, Accept, Content-Type, and rendering bodies.

Stored JSON bytes are served as they are; XML and pretty JSON are produced from them on the way
out.  Request bodies become FHIR JSON dicts whatever their format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError, OutcomeIssue
from fhir_server.model import jsonio, xml_codec

JSON_CT = "application/fhir+json; charset=utf-8"
XML_CT = "application/fhir+xml; charset=utf-8"

_FORMAT_ALIASES = {
    "json": "json",
    "application/json": "json",
    "application/fhir+json": "json",
    "text/json": "json",
    "xml": "xml",
    "application/xml": "xml",
    "application/fhir+xml": "xml",
    "text/xml": "xml",
}
# Accepted, never sent as a request body: bulk export files are NDJSON, and what else such a
# request may get back (an OperationOutcome) is JSON.
_ACCEPT_ALIASES = {**_FORMAT_ALIASES, "application/fhir+ndjson": "json", "application/ndjson": "json"}
_ACCEPT_ANY = {"*/*", "application/*"}


@dataclass(frozen=True, slots=True)
class OutFormat:
    kind: str  # "json" | "xml"
    pretty: bool = False

    @property
    def content_type(self) -> str:
        return JSON_CT if self.kind == "json" else XML_CT


DEFAULT_FORMAT = OutFormat("json")


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def choose_format(format_param: str | None, accept: str | None, pretty_param: str | None) -> OutFormat:
    """Pick the response format: ``_format`` wins over Accept (R4 http.html#mime-type)."""
    pretty = pretty_param == "true"
    if format_param:
        kind = _FORMAT_ALIASES.get(_media_type(format_param.replace(" ", "+")))
        if kind is None:
            raise FhirError(
                406, f"Unsupported _format '{format_param}': use json, xml or their FHIR mime types",
                code="not-supported",
            )
        return OutFormat(kind, pretty)
    if not accept:
        return OutFormat("json", pretty)
    best: tuple[float, int, str] | None = None
    for i, item in enumerate(accept.split(",")):
        parts = item.split(";")
        mt = parts[0].strip().lower()
        q = 1.0
        for p in parts[1:]:
            k, _, v = p.strip().partition("=")
            if k.strip() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        kind = _ACCEPT_ALIASES.get(mt) or ("json" if mt in _ACCEPT_ANY else None)
        if kind is None or q <= 0:
            continue
        # Highest q wins; among equals the first listed; an explicit type beats a wildcard.
        rank = (q, -i - (1000 if mt in _ACCEPT_ANY else 0), kind)
        if best is None or rank[:2] > best[:2]:
            best = rank
    if best is None:
        raise FhirError(406, f"None of the accepted media types is supported: '{accept}'", code="not-supported")
    return OutFormat(best[2], pretty)


def parse_body(content_type: str | None, body: bytes, *, xml_max_depth: int = 100) -> Any:
    """Decode a request body into FHIR JSON; 415 for an unsupported media type, 400 if malformed."""
    if not body.strip():
        raise FhirError(400, "The request body is empty; a FHIR resource was expected", code="invalid")
    kind: str | None
    if content_type:
        kind = _FORMAT_ALIASES.get(_media_type(content_type))
        if kind is None:
            raise FhirError(
                415, f"Unsupported Content-Type '{content_type}': use application/fhir+json or application/fhir+xml",
                code="not-supported",
            )
    else:
        # No Content-Type: take the body for what it evidently is.
        kind = "xml" if body.lstrip()[:1] == b"<" else "json"
    if kind == "json":
        try:
            return jsonio.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FhirError(400, [OutcomeIssue("error", "structure", f"Malformed JSON: {exc}")]) from None
    try:
        return xml_codec.xml_to_resource(body, max_depth=xml_max_depth)
    except xml_codec.XmlFormatError as exc:
        raise FhirError(400, [OutcomeIssue("error", "structure", f"Malformed or invalid FHIR XML: {exc}")]) from None


def render_stored(body: bytes, fmt: OutFormat) -> bytes:
    """Serve stored JSON bytes in the negotiated format, splicing them untouched for plain JSON."""
    if fmt.kind == "json":
        return jsonio.dumps(jsonio.loads(body), pretty=True) if fmt.pretty else body
    return xml_codec.resource_to_xml(jsonio.loads(body), pretty=fmt.pretty)


def render_dict(resource: dict[str, Any], fmt: OutFormat) -> bytes:
    if fmt.kind == "json":
        return jsonio.dumps(resource, pretty=fmt.pretty)
    return xml_codec.resource_to_xml(resource, pretty=fmt.pretty)
