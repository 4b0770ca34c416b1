"""Profile conformance of written resources: the one place where writes meet the profile validator.

Every profile in ``meta.profile`` that the server knows is enforced (its errors refuse the write
with 422 and the OperationOutcome); an unknown profile is ignored with a warning in the log, or
refused when ``FHIR_UNKNOWN_PROFILES=refuse``.  ``FHIR_REQUIRE_PROFILES=us-core-6.1.0`` (or
``us-core-3.1.1``) makes US Core conformance mandatory for the types US Core profiles: the
resource must claim one of that version's profiles for its type, or be valid against the only
one there is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fhir_server.errors import FhirError, OutcomeIssue
from fhir_server.model import jsonio

if TYPE_CHECKING:
    from fhir_server.config import Settings
    from fhir_server.storage.base import Backend
    from fhir_server.validation.validator import ProfileValidator

log = logging.getLogger("fhir_server.profiles")

_US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
_warned: set[str] = set()
_ORDER = {"fatal": 0, "error": 1, "warning": 2, "information": 3}


def validator() -> ProfileValidator:
    from fhir_server.validation.validator import default_validator

    return default_validator()


@lru_cache(maxsize=8)
def _required(requirement: str) -> dict[str, tuple[str, ...]]:
    """resource type -> canonicals of the required package's profiles for it."""
    if not requirement:
        return {}
    name, _, version = requirement.rpartition("-")
    if name != "us-core" or not version:
        raise ValueError(f"FHIR_REQUIRE_PROFILES '{requirement}' is not of the form us-core-<version>")
    out: dict[str, list[str]] = {}
    v = validator()
    for canonical in v.profiles():
        url, _, ver = canonical.partition("|")
        if url.startswith(_US_CORE) and ver == version:
            sd = v.conformance.sd(canonical)
            if sd is not None:
                out.setdefault(sd["type"], []).append(canonical)
    if not out:
        raise ValueError(f"FHIR_REQUIRE_PROFILES '{requirement}': no such US Core version is loaded")
    return {t: tuple(sorted(urls)) for t, urls in out.items()}


def _resolver(backend: Backend, base: str) -> Callable[[str], dict[str, Any] | None]:
    def resolve(reference: str) -> dict[str, Any] | None:
        if reference.startswith(base + "/"):
            reference = reference[len(base) + 1:]
        rt, _, rid = reference.partition("/")
        if not rid or "/" in rid:
            return None
        stored = backend.read(rt, rid)
        return None if stored is None or stored.body is None else jsonio.loads(stored.body)

    return resolve


def declared_profiles(resource: dict[str, Any]) -> list[str]:
    """meta.profile as written, when it has the right shape (the structural check reports the rest)."""
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return [p for p in profiles if isinstance(p, str)] if isinstance(profiles, list) else []


def check_requirement(requirement: str) -> None:
    """Fail at startup, not at the first write, on a FHIR_REQUIRE_PROFILES the server cannot meet."""
    if requirement:
        _required(requirement)


def profiles_to_check(settings: Settings, resource_type: str, resource: dict[str, Any]) -> list[str]:
    """The profiles a written resource is validated against; 422 for what the settings refuse."""
    declared = declared_profiles(resource)
    v = validator() if declared or settings.require_profiles else None
    chosen: list[str] = []
    for url in declared:
        assert v is not None
        if v.known(url):
            chosen.append(url)
        elif settings.unknown_profiles == "refuse":
            raise FhirError(422, [OutcomeIssue("error", "not-supported", f"Profile '{url}' is not known to this "
                                               "server", (f"{resource_type}.meta.profile",))])
        elif url not in _warned and len(_warned) < 1000:
            # Once per profile and process: a bulk load would otherwise repeat it thousands of times.
            _warned.add(url)
            log.warning("%s claims profile %s, which this server does not know: not checked", resource_type, url)
    required = _required(settings.require_profiles).get(resource_type) if settings.require_profiles else None
    if required:
        by_url = {u.partition("|")[0]: u for u in required}
        # Under a required version, an unversioned claim of one of its profiles means that version.
        chosen = [by_url.get(u, u) if "|" not in u else u for u in chosen]
        met = [by_url[u.partition("|")[0]] for u in chosen if u.partition("|")[0] in by_url]
        if not met:
            if len(required) != 1:
                raise FhirError(422, [OutcomeIssue(
                    "error", "required",
                    f"{resource_type} must claim one of the {settings.require_profiles} profiles in meta.profile: "
                    + ", ".join(by_url),
                    (f"{resource_type}.meta.profile",))])
            met = [required[0]]
        # A claim of the profile in another (or no) version is also held to the required version.
        chosen.extend(u for u in met if u not in chosen)
    return chosen


def check_profiles(settings: Settings, resource_type: str, resource: dict[str, Any],
                   backend: Backend | None = None) -> None:
    """Refuse (422) a resource that violates a profile it claims or must meet.  With ``backend``,
    referenced resources on this server are read for FHIR_TARGET_PROFILES=meta|validate (inside
    the caller's transaction, so a Bundle's own entries count)."""
    profiles = profiles_to_check(settings, resource_type, resource)
    if not profiles:
        return
    resolver = _resolver(backend, settings.fhir_base) if backend is not None else None
    issues = validator().validate(resource, profiles, structural=False, must_support=False, resolver=resolver)
    errors = [i for i in issues if i.is_error]
    if errors:
        shown = sorted((i for i in issues if i.severity != "information"), key=lambda i: _ORDER.get(i.severity, 9))
        raise FhirError(422, [i.to_outcome_issue() for i in shown])
