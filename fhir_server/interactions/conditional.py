"""Search criteria of conditional interactions (If-None-Exist, conditional update, delete and
patch, conditional references in Bundles), and their evaluation through the storage seam."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from fhir_server.errors import FhirError
from fhir_server.interactions.common import Context
from fhir_server.interactions.search import restrict
from fhir_server.search.parse import parse_search
from fhir_server.search.query import SearchQuery
from fhir_server.storage.base import StoredResource

if TYPE_CHECKING:
    from fhir_server.auth.policy import AccessPolicy


def criteria(ctx: Context, resource_type: str, params: list[tuple[str, str]] | str, what: str,
             policy: AccessPolicy | None = None) -> SearchQuery:
    """Parse the criteria of a conditional interaction; 400 when there are none or one is unknown.

    Strict on purpose: a criterion the engine cannot evaluate must not silently match everything."""
    if isinstance(params, str):
        text = params.split("?", 1)[1] if "?" in params else params
        params = parse_qsl(text, keep_blank_values=True)
    params = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
    if not params:
        raise FhirError(400, f"{what} needs search criteria, e.g. identifier=system|value", code="invalid")
    query = parse_search([resource_type], params, default_count=2, max_count=2, strict=True,
                         base_url=ctx.base)
    if not query.conditions:
        raise FhirError(400, f"{what} has no search criteria that select resources", code="invalid")
    if policy is not None:
        # Criteria see only what the caller may search: matching must not reveal (or pick) others.
        restrict(policy, query, explicit_types=True)
    return query


def describe(query: SearchQuery) -> str:
    return f"{query.resource_types[0]}?" + "&".join(f"{k}={v}" for k, v in query.link_params)


def find(ctx: Context, query: SearchQuery, limit: int = 2, *, lock: bool = False) -> list[StoredResource]:
    return ctx.backend.match(query, limit, lock=lock)


def find_one(ctx: Context, query: SearchQuery, what: str, *, lock: bool = False,
             none_status: int = 404) -> StoredResource:
    """The single match of ``query``; 412 for several, ``none_status`` for none."""
    found = find(ctx, query, lock=lock)
    if len(found) > 1:
        raise FhirError(412, f"{what} '{describe(query)}' matched more than one resource", code="multiple-matches")
    if not found:
        raise FhirError(none_status, f"{what} '{describe(query)}' matched no resource", code="not-found")
    return found[0]
