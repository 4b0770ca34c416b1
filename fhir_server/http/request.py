"""The request as the interactions see it: method, path segments, parameters, headers, body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fhir_server.http.negotiation import OutFormat

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy


@dataclass(slots=True)
class FhirRequest:
    method: str
    segments: list[str]  # path below the FHIR base, split on "/"
    query: list[tuple[str, str]]  # every query parameter in order, repeated ones kept
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    base: str  # public FHIR base URL, no trailing slash
    fmt: OutFormat
    # Parameters from a form body (POST _search) come after the query string ones.
    form: list[tuple[str, str]] = field(default_factory=list)
    # What the caller's token allows; None when authorisation is off (FHIR_AUTH=off).
    policy: AccessPolicy | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def prefer(self) -> dict[str, str]:
        """Prefer header tokens (RFC 7240), e.g. {"return": "minimal", "handling": "strict"}."""
        out: dict[str, str] = {}
        raw = self.headers.get("prefer")
        if not raw:
            return out
        for part in raw.split(","):
            for token in part.split(";"):
                key, _, value = token.strip().partition("=")
                if key:
                    out[key.strip().lower()] = value.strip().strip('"')
        return out
