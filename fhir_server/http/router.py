"""The route table of the FHIR REST API: (method, path shape) -> interaction.

Paths are matched on their segments below the base.  What FHIR defines but this server does not
implement yet answers 501 with an OperationOutcome; what FHIR does not define answers 404/405.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.interactions.capabilities import capabilities
from fhir_server.interactions.create import create
from fhir_server.interactions.delete import delete
from fhir_server.interactions.history import history
from fhir_server.interactions.read import read, vread
from fhir_server.interactions.search import compartment_search, search
from fhir_server.interactions.update import update
from fhir_server.model.facts import get_facts
from fhir_server.model.registry import require_served_type

Handler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    args: tuple[str, ...]
    reads_only: bool  # no write: may run on the event loop when the backend's reads are fast


def _not_allowed(method: str, path: str, allowed: str) -> FhirError:
    return FhirError(405, f"{method} is not allowed on {path}; allowed: {allowed}",
                     code="not-supported", headers={"Allow": allowed})


def _not_implemented(what: str) -> FhirError:
    return FhirError(501, f"{what} is not supported by this server", code="not-supported")


def resolve(method: str, seg: list[str]) -> Route:
    n = len(seg)
    path = "/" + "/".join(seg)
    if n and seg[-1].startswith("$") or (n > 1 and any(s.startswith("$") for s in seg)):
        raise _not_implemented(f"Operation '{next(s for s in seg if s.startswith('$'))}'")
    if n == 0:
        if method == "GET":
            return Route(search, (), True)
        if method == "POST":
            raise _not_implemented("Batch and transaction Bundles")
        raise _not_allowed(method, path, "GET, POST")
    head = seg[0]
    if head == "metadata" and n == 1:
        if method == "GET":
            return Route(capabilities, (), True)
        raise _not_allowed(method, path, "GET")
    if head == "_history" and n == 1:
        if method == "GET":
            return Route(history, (), True)
        raise _not_allowed(method, path, "GET")
    if head == "_search" and n == 1:
        if method in ("GET", "POST"):
            return Route(search, (), method == "GET")
        raise _not_allowed(method, path, "GET, POST")
    require_served_type(head)
    if n == 1:
        if method == "GET":
            return Route(search, (head,), True)
        if method == "POST":
            return Route(create, (head,), False)
        if method in ("PUT", "DELETE", "PATCH"):
            raise _not_implemented(f"Conditional {'update' if method == 'PUT' else method.lower()}")
        raise _not_allowed(method, path, "GET, POST")
    second = seg[1]
    if second == "_search" and n == 2:
        if method in ("GET", "POST"):
            return Route(search, (head,), method == "GET")
        raise _not_allowed(method, path, "GET, POST")
    if second == "_history" and n == 2:
        if method == "GET":
            return Route(history, (head,), True)
        raise _not_allowed(method, path, "GET")
    if n == 2:
        if method == "GET":
            return Route(read, (head, second), True)
        if method == "PUT":
            return Route(update, (head, second), False)
        if method == "DELETE":
            return Route(delete, (head, second), False)
        if method == "PATCH":
            raise _not_implemented("PATCH")
        raise _not_allowed(method, path, "GET, PUT, DELETE")
    if seg[2] == "_history" and n == 3:
        if method == "GET":
            return Route(history, (head, second), True)
        raise _not_allowed(method, path, "GET")
    if seg[2] == "_history" and n == 4:
        if method == "GET":
            return Route(vread, (head, second, seg[3]), True)
        raise _not_allowed(method, path, "GET")
    if n == 3 and method == "GET" and (seg[2] in get_facts().resource_types or seg[2] == "*"):
        if head not in get_facts().compartments:
            raise FhirError(404, f"{head} is not a compartment", code="not-found")
        if seg[2] == "*":
            raise _not_implemented(f"Compartment search across all types ({path})")
        return Route(compartment_search, (head, second, seg[2]), True)
    raise FhirError(404, f"No FHIR interaction matches {method} {path}", code="not-found")
