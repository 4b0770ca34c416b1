"""The access policy: what one authorised principal may do, decided without any I/O.

One ``AccessPolicy`` per principal (per access token) answers every question the interactions ask.
The rules:

Permissions per interaction (``INTERACTION_PERMISSIONS``)
    read, vread and instance history need ``r``; search (type, compartment, system) and type or
    system history need ``s``; create ``c``; update ``u`` when the resource exists and ``c`` when
    the update creates it (``permission_for("update", exists=...)``, ``require_update``); patch
    ``u``; delete ``d``.  $everything needs ``r`` and ``s`` on every type it returns: pass
    ``permissions="rs"`` to ``multi_type_condition``.  Operations that touch no stored data
    ($validate, metadata) need nothing beyond an authenticated principal.

Scope contexts
    ``system/`` scopes have no compartment restriction.  ``user/`` scopes have none either, except
    when the principal's fhirUser is a Patient (``Patient/85``, also as an absolute URL): then they
    act like patient scopes for that patient.  ``patient/`` scopes are restricted to the patient
    compartment of the launch-context patient (``principal.patient``); without one they grant
    nothing.  Other fhirUser types (Practitioner, RelatedPerson, Person) are not restricted here.

Patient compartment
    The R4 CompartmentDefinition "patient", as in ``Facts.compartments["Patient"]``: a resource of a
    type listed there belongs to patient P when one of the listed (indexed) reference parameters
    points at ``Patient/P``; the Patient resource itself when its id is P (or, as the definition
    says, when its ``link`` points at P) -- the same membership compartment search and $everything
    use.  Types the definition does not list (Organization, Practitioner, Location, Medication, ...)
    are shared data: a patient-restricted scope on such a type allows every resource of it (SMART
    apps read the Medication, Organization and Practitioner a patient's data refers to).

Granular scopes (SMART v2 ``?query``)
    A resource must match every parameter of the query.  Only token parameters of the type are
    supported, without modifiers, with values ``system|code``, ``|code``, ``code`` or ``system|``
    (a comma list ORs them, as in a search).  A scope whose query uses any other kind of
    parameter, a modifier, a result parameter (``_count``, ...), or a parameter the type doesn't
    have matches nothing: failing closed is the only safe reading of a restriction we can't
    evaluate.  ``can`` / ``require`` ignore queries (they answer "may it ever").

Writes
    Under a patient restriction, a written resource (create, update -- before and after --, patch,
    delete) must be in the patient's compartment and must not reference any other patient through
    a compartment parameter: a patient's app cannot file data into another patient's record.

Several scopes
    Grants are a union: a resource is allowed when any applicable scope allows it.

The same rules run in two forms that must agree: ``allows`` evaluates them on one resource (using
the search index rows of the resource, from the same ``Indexer`` the database index is built
with) and ``search_condition`` / ``multi_type_condition`` express them as search conditions for
the storage planner.  Updates must pass both on the stored and on the new content
(``require_update``), so that a patient cannot move a resource into or out of its compartment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from fhir_server.auth.scopes import PERMISSION_ORDER, ScopeSet
from fhir_server.errors import FhirError
from fhir_server.model.facts import get_facts
from fhir_server.search.code_case import code_matches
from fhir_server.search.extract import Indexer
from fhir_server.search.parse import parse_search
from fhir_server.search.query import AllOf, AnyOf, Condition, InCompartment, TokenValue, TypeIn
from fhir_server.search.registry import get_registry
from fhir_server.storage.base import StoredResource

INTERACTION_PERMISSIONS: dict[str, str] = {
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "search-type": "s",
    "search-system": "s",
    "search-compartment": "s",
    "history-type": "s",
    "history-system": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
}

# A condition no resource satisfies (an empty IN): what a search gets when every scope that
# applies to it is a granular scope we cannot evaluate.
NOTHING = TypeIn(())


def permission_for(interaction: str, *, exists: bool = True) -> str:
    """The permission an interaction needs; an update that creates the resource needs ``c``."""
    if interaction == "update" and not exists:
        return "c"
    try:
        return INTERACTION_PERMISSIONS[interaction]
    except KeyError:
        raise ValueError(f"Unknown interaction '{interaction}'") from None


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    subject: str | None  # username, None for client_credentials
    scopes: ScopeSet
    patient: str | None  # launch context patient id
    encounter: str | None
    fhir_user: str | None  # e.g. "Practitioner/123" or "Patient/85"


@dataclass(frozen=True, slots=True)
class _Grant:
    """One resource scope as it applies to this principal."""

    resource_type: str  # or "*"
    permissions: frozenset[str]
    patient: str | None  # the compartment owner the scope is restricted to, None: no restriction
    params: tuple[tuple[str, str], ...]
    raw: str


# -- process-wide caches: they depend on the base URL and the static definitions only -------------


@lru_cache(maxsize=8)
def _indexer(base_url: str) -> Indexer:
    return Indexer(base_url)


@lru_cache(maxsize=256)
def _compartment_codes(resource_type: str) -> tuple[str, ...] | None:
    """The reference parameters that put a ``resource_type`` resource in a patient's compartment,
    or None when the type is not in the Patient compartment (shared data)."""
    codes = get_facts().compartments.get("Patient", {}).get(resource_type)
    if codes is None:
        return None
    registry = get_registry()
    # A listed parameter we don't index can't be evaluated in a search; leaving it out of both
    # forms keeps them in agreement (and fails closed).
    return tuple(
        c for c in codes
        if (p := registry.get(resource_type, c)) is not None and p.supported and p.type == "reference"
    )


@lru_cache(maxsize=4096)
def _token_conditions(resource_type: str, params: tuple[tuple[str, str], ...],
                      base_url: str) -> tuple[Condition, ...] | None:
    """The search conditions of a granular query on ``resource_type``; None when it has anything
    but plain token parameters of that type (then the scope matches nothing)."""
    conds: list[Condition] = []
    for name, value in params:
        if ":" in name or "." in name:
            return None  # modifiers (:of-type, :not, ...) and chains are not plain token tests
        # One parameter at a time: parse_search takes _count, _sort, ... as result parameters
        # without a condition, which would silently drop the restriction.
        try:
            query = parse_search([resource_type], [(name, value)], default_count=1, max_count=1,
                                 strict=True, base_url=base_url)
        except FhirError:
            return None
        if len(query.conditions) != 1:
            return None
        cond = query.conditions[0]
        if not (isinstance(cond, Condition) and cond.kind == "token" and cond.modifier is None
                and cond.code == name):
            return None
        conds.append(cond)
    return tuple(conds)


def _patient_of(fhir_user: str | None) -> str | None:
    """The id of a fhirUser that is a Patient (``Patient/85`` or ``https://host/fhir/Patient/85``)."""
    if not fhir_user:
        return None
    parts = fhir_user.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None


def _token_matches(v: TokenValue, row: dict[str, Any]) -> bool:
    # The in-memory twin of search_sql.token_clause (plain token parameters only: see above).
    if v.code is not None and not code_matches(v.code, row["system"], row["code"]):
        return False
    if v.any_system:
        return True
    return row["system"] is None if v.system is None else row["system"] == v.system


def _conjunction(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _union(branches: list[Any]) -> Any:
    unique = list(dict.fromkeys(branches))
    if not unique:
        return NOTHING
    return unique[0] if len(unique) == 1 else AnyOf(tuple(unique))


class AccessPolicy:
    """Every access decision for one principal; cheap to build, caches its answers per type."""

    __slots__ = ("_applicable", "_conditions", "_grants", "base_url", "principal")

    def __init__(self, principal: Principal, base_url: str) -> None:
        self.principal = principal
        self.base_url = base_url.rstrip("/")
        user_patient = _patient_of(principal.fhir_user)
        grants: list[_Grant] = []
        for s in principal.scopes.resource_scopes:
            if s.context == "patient":
                if principal.patient is None:
                    continue  # a patient scope without a patient in context grants nothing
                owner: str | None = principal.patient
            elif s.context == "user":
                owner = user_patient
            else:
                owner = None
            grants.append(_Grant(s.resource_type, s.permissions, owner, s.params, s.raw))
        self._grants = tuple(grants)
        self._applicable: dict[tuple[str, str], tuple[_Grant, ...]] = {}
        self._conditions: dict[tuple[str, str], Any] = {}

    # -- type level ---------------------------------------------------------------------------
    def _for(self, permission: str, resource_type: str) -> tuple[_Grant, ...]:
        key = (permission, resource_type)
        found = self._applicable.get(key)
        if found is None:
            if len(permission) != 1 or permission not in PERMISSION_ORDER:
                raise ValueError(f"Unknown permission '{permission}' (one of c r u d s)")
            found = tuple(g for g in self._grants
                          if permission in g.permissions and g.resource_type in (resource_type, "*"))
            self._applicable[key] = found
        return found

    def can(self, permission: str, resource_type: str) -> bool:
        """Some scope grants ``permission`` on the type (compartments and queries aside)."""
        return bool(self._for(permission, resource_type))

    def require(self, permission: str, resource_type: str) -> None:
        if not self._for(permission, resource_type):
            raise self._forbidden(permission, resource_type)

    def _forbidden(self, permission: str, resource_type: str) -> FhirError:
        p = self.principal
        context = "system" if p.subject is None else "patient" if p.patient is not None else "user"
        example = "rs" if permission in "rs" else permission
        message = (f"Access to {resource_type} needs a scope granting '{permission}' on {resource_type}, "
                   f"e.g. {context}/{resource_type}.{example}")
        if p.patient is None and p.scopes.allows("patient", resource_type, permission):
            message += "; patient/ scopes grant nothing without a patient in the launch context"
        return FhirError(403, message, code="forbidden")

    # -- search conditions --------------------------------------------------------------------
    def _restricted(self, g: _Grant, resource_type: str) -> bool:
        return bool(g.params) or (g.patient is not None and _compartment_codes(resource_type) is not None)

    def _condition(self, permission: str, resource_type: str) -> Any:
        """None (no restriction), or one condition; NOTHING when no applicable scope can match."""
        key = (permission, resource_type)
        if key in self._conditions:
            return self._conditions[key]
        grants = self._for(permission, resource_type)
        result: Any = NOTHING
        if grants and not all(self._restricted(g, resource_type) for g in grants):
            result = None
        elif grants:
            branches: list[Any] = []
            codes = _compartment_codes(resource_type)
            for g in grants:
                parts: list[Any] = []
                if g.patient is not None and codes is not None:
                    parts.append(InCompartment("Patient", g.patient, tuple((resource_type, c) for c in codes)))
                if g.params:
                    tokens = _token_conditions(resource_type, g.params, self.base_url)
                    if tokens is None:
                        continue
                    parts.extend(tokens)
                branches.append(_conjunction(parts))
            result = _union(branches)
        self._conditions[key] = result
        return result

    def search_condition(self, resource_type: str) -> Any | None:
        """What a search of ``resource_type`` must AND with its own conditions so that only
        permitted resources match; None when the principal may search the type unrestricted.
        403 when no scope grants ``s`` on the type."""
        self.require("s", resource_type)
        return self._condition("s", resource_type)

    def type_condition(self, resource_type: str, permissions: str = "s") -> Any | None:
        """Like ``search_condition`` for several permissions at once (all must hold), without the 403:
        None when unrestricted, NOTHING when no resource of the type is allowed."""
        conds: list[Any] = []
        for p in permissions:
            c = self._condition(p, resource_type)
            if c == NOTHING:
                return NOTHING
            if c is not None:
                conds.append(c)
        conds = list(dict.fromkeys(conds))
        return _conjunction(conds) if conds else None

    def multi_type_condition(self, types: Sequence[str], permissions: str = "s") -> tuple[list[str], Any | None]:
        """For a search over several types (system search, $everything with ``permissions="rs"``):
        the types granted every permission, and one condition restricting the results to what is
        permitted -- None when those types are all unrestricted.  When no type is granted the list
        is empty and the condition is NOTHING, so that using it anyway returns nothing."""
        allowed = [t for t in types if all(self._for(p, t) for p in permissions)]
        if not allowed:
            return [], NOTHING
        free: list[str] = []
        branches: list[Any] = []
        # Types restricted only by the same compartment share one InCompartment: one index lookup
        # instead of one per type.
        compartments: dict[str, tuple[list[str], list[tuple[str, str]]]] = {}
        for t in allowed:
            cond = self.type_condition(t, permissions)
            if cond is None:
                free.append(t)
            elif isinstance(cond, InCompartment):
                group = compartments.setdefault(cond.owner_id, ([], []))
                group[0].append(t)
                group[1].extend(cond.params)
            elif cond != NOTHING:
                inner = cond.conditions if isinstance(cond, AllOf) else (cond,)
                branches.append(AllOf((TypeIn((t,)), *inner)))
        if len(free) == len(allowed):
            return allowed, None
        merged = [AllOf((TypeIn(tuple(ts)), InCompartment("Patient", owner, tuple(pairs))))
                  for owner, (ts, pairs) in compartments.items()]
        head: list[Any] = [TypeIn(tuple(free))] if free else []
        return allowed, _union([*head, *merged, *branches])

    # -- concrete resources -------------------------------------------------------------------
    def allows(self, resource_type: str, resource: dict[str, Any], permission: str = "r") -> bool:
        """Whether ``permission`` on this resource is granted: by type, compartment and query."""
        grants = self._for(permission, resource_type)
        if not grants:
            return False
        if resource.get("resourceType", resource_type) != resource_type:
            return False
        rows: list[tuple[str, dict[str, Any]]] | None = None
        codes = _compartment_codes(resource_type)
        for g in grants:
            if not self._restricted(g, resource_type):
                return True
            if rows is None:
                rows = _indexer(self.base_url)(resource_type, resource)
            if g.patient is not None and codes is not None and not self._in_compartment(
                resource_type, resource, rows, codes, g.patient
            ):
                continue
            if permission in "cud" and g.patient is not None and codes is not None and self._names_other_patient(
                rows, codes, g.patient
            ):
                # A patient's app writes that patient's data only: a resource that also puts
                # another patient's compartment in play (subject A, performer B) is refused.
                continue
            if g.params and not self._matches_params(resource_type, rows, g.params):
                continue
            return True
        return False

    @staticmethod
    def _in_compartment(resource_type: str, resource: dict[str, Any], rows: list[tuple[str, dict[str, Any]]],
                        codes: tuple[str, ...], patient: str) -> bool:
        if resource_type == "Patient" and resource.get("id") == patient:
            return True
        return any(
            kind == "reference" and row["param"] in codes
            and row["target_type"] == "Patient" and row["target_id"] == patient
            for kind, row in rows
        )

    @staticmethod
    def _names_other_patient(rows: list[tuple[str, dict[str, Any]]], codes: tuple[str, ...], patient: str) -> bool:
        return any(
            kind == "reference" and row["param"] in codes
            and row["target_type"] == "Patient" and row["target_id"] != patient
            for kind, row in rows
        )

    def _matches_params(self, resource_type: str, rows: list[tuple[str, dict[str, Any]]],
                        params: tuple[tuple[str, str], ...]) -> bool:
        conds = _token_conditions(resource_type, params, self.base_url)
        if conds is None:
            return False
        return all(
            any(kind == "token" and row["param"] == c.code and any(_token_matches(v, row) for v in c.values)
                for kind, row in rows)
            for c in conds
        )

    def require_resource(self, resource_type: str, resource: dict[str, Any], permission: str = "r") -> None:
        self.require(permission, resource_type)
        if not self.allows(resource_type, resource, permission):
            rid = resource.get("id")
            what = f"{resource_type}/{rid}" if rid else f"This {resource_type}"
            raise FhirError(
                403,
                f"{what} is outside what the granted scopes allow for '{permission}' "
                "(the patient's compartment or the scopes' granular restrictions)",
                code="forbidden",
            )

    def require_update(self, resource_type: str, current: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """An update (or patch): ``u`` on the stored and on the new content; ``c`` on the new content
        when nothing is stored (update as create)."""
        if current is None:
            self.require_resource(resource_type, new, "c")
            return
        self.require_resource(resource_type, current, "u")
        self.require_resource(resource_type, new, "u")

    def visible(self, stored: StoredResource, permission: str = "r") -> bool:
        """The search/history filter hook: may this stored version be shown?  A deleted version has
        no content to judge, so it is shown only when the type is unrestricted for the principal."""
        if stored.body is None:
            return any(not self._restricted(g, stored.resource_type)
                       for g in self._for(permission, stored.resource_type))
        return self.allows(stored.resource_type, orjson.loads(stored.body), permission)
