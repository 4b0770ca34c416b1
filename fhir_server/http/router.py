"""The route table of the FHIR REST API: (method, path shape) -> interaction.

Paths are matched on their segments below the base.  What FHIR defines but this server does not
implement yet answers 501 with an OperationOutcome; what FHIR does not define answers 404/405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.interactions.capabilities import capabilities
from fhir_server.interactions.create import create, create_async
from fhir_server.interactions.delete import conditional_delete, delete
from fhir_server.interactions.history import history
from fhir_server.interactions.patch import conditional_patch, patch
from fhir_server.interactions.read import read, vread
from fhir_server.interactions.search import compartment_search, search
from fhir_server.interactions.transaction import bundle
from fhir_server.interactions.update import conditional_update, update, update_async
from fhir_server.model.facts import get_facts
from fhir_server.model.registry import require_served_type
from fhir_server.operations import export, validate
from fhir_server.operations.everything import everything

Handler = Callable[..., Any]
AsyncHandler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    args: tuple[str, ...]
    reads_only: bool  # no write: may run on the event loop when the backend's reads are fast
    public: bool = False  # served without a token even when authorisation is on
    # The same interaction as a coroutine, for a backend whose writes the event loop can await.
    on_loop: AsyncHandler | None = None


def _not_allowed(method: str, path: str, allowed: str) -> FhirError:
    return FhirError(405, f"{method} is not allowed on {path}; allowed: {allowed}",
                     code="not-supported", headers={"Allow": allowed})


def _not_implemented(what: str) -> FhirError:
    return FhirError(501, f"{what} is not supported by this server", code="not-supported")


def resolve(method: str, seg: list[str]) -> Route:
    n = len(seg)
    path = "/" + "/".join(seg)
    if any(s.startswith("$") for s in seg):
        return _operation(method, seg, path)
    if n == 0:
        if method == "GET":
            return Route(search, (), True)
        if method == "POST":
            return Route(bundle, (), False)
        raise _not_allowed(method, path, "GET, POST")
    head = seg[0]
    if head == "metadata" and n == 1:
        if method == "GET":
            return Route(capabilities, (), True, public=True)
        raise _not_allowed(method, path, "GET")
    if head == "_history" and n == 1:
        if method == "GET":
            return Route(history, (), True)
        raise _not_allowed(method, path, "GET")
    if head == "_export" and n in (2, 3):
        # Status (GET), cancel (DELETE) and files of bulk export jobs.
        if n == 2 and method == "GET":
            return Route(export.status, (seg[1],), True)
        if n == 2 and method == "DELETE":
            return Route(export.cancel, (seg[1],), False)
        if n == 3 and method == "GET":
            return Route(export.download, (seg[1], seg[2]), True)
        raise _not_allowed(method, path, "GET, DELETE" if n == 2 else "GET")
    if head == "_search" and n == 1:
        if method in ("GET", "POST"):
            return Route(search, (), method == "GET")
        raise _not_allowed(method, path, "GET, POST")
    require_served_type(head)
    if n == 1:
        if method == "GET":
            return Route(search, (head,), True)
        if method == "POST":
            return Route(create, (head,), False, on_loop=create_async)
        if method == "PUT":
            return Route(conditional_update, (head,), False)
        if method == "DELETE":
            return Route(conditional_delete, (head,), False)
        if method == "PATCH":
            return Route(conditional_patch, (head,), False)
        raise _not_allowed(method, path, "GET, POST, PUT, DELETE, PATCH")
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
            return Route(update, (head, second), False, on_loop=update_async)
        if method == "DELETE":
            return Route(delete, (head, second), False)
        if method == "PATCH":
            return Route(patch, (head, second), False)
        raise _not_allowed(method, path, "GET, PUT, DELETE, PATCH")
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


# Operations this server implements: (type or None for system, instance?, name) -> handler.
_OPERATIONS: dict[tuple[str | None, bool, str], Handler] = {
    ("Patient", True, "$everything"): everything,
    ("Encounter", True, "$everything"): everything,
    (None, False, "$export"): export.kickoff,
    ("Patient", False, "$export"): export.kickoff,
    ("Group", True, "$export"): export.kickoff,
    ("*", False, "$validate"): validate.validate,  # "*": every served type
    ("*", True, "$validate"): validate.validate,
}
# Operations that change state (queue a job) or take real CPU: never run on the event loop.
_OFF_LOOP = {export.kickoff, validate.validate}


def _operation(method: str, seg: list[str], path: str) -> Route:
    n = len(seg)
    name = seg[-1]
    if not name.startswith("$") or n > 3:
        raise FhirError(404, f"No FHIR interaction matches {method} {path}", code="not-found")
    rt = seg[0] if n > 1 else None
    if rt is not None:
        require_served_type(rt)
    handler = _OPERATIONS.get((rt, n == 3, name)) or (_OPERATIONS.get(("*", n == 3, name)) if rt else None)
    if handler is None:
        level = "instance" if n == 3 else "type" if n == 2 else "system"
        raise _not_implemented(f"Operation '{name}' at the {level} level{f' of {rt}' if rt else ''}")
    # Operations without side effects take GET as well as POST (R4 operations.html).
    if method not in ("GET", "POST"):
        raise _not_allowed(method, path, "GET, POST")
    return Route(handler, tuple(seg[:-1]), method == "GET" and handler not in _OFF_LOOP)
