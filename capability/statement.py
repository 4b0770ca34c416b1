"""The CapabilityStatement, generated from what the server really does.

Every resource type listed is served, with exactly the interactions it implements and the search
parameters whose index extraction works (the registry marks the others unsupported, and the
server refuses them).
"""

from __future__ import annotations

from typing import Any

from fhir_server import __version__
from fhir_server.model.instant import now_instant
from fhir_server.model.registry import served_types
from fhir_server.search.params import near
from fhir_server.search.registry import SearchParamDef, get_registry

TYPE_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type"]
SYSTEM_INTERACTIONS = ["transaction", "batch", "history-system", "search-system"]
# Operations served per type: (name, canonical of its OperationDefinition).
BULK = "http://hl7.org/fhir/uv/bulkdata"
OPERATIONS = {
    "Patient": [("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything"),
                ("export", f"{BULK}/OperationDefinition/patient-export")],
    "Encounter": [("everything", "http://hl7.org/fhir/OperationDefinition/Encounter-everything")],
    "Group": [("export", f"{BULK}/OperationDefinition/group-export")],
}
SYSTEM_OPERATIONS = [("export", f"{BULK}/OperationDefinition/export")]
COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")


def _param(p: SearchParamDef) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.code, "definition": p.url, "type": p.type}
    # Where R4 leaves the server a choice, or the server supports less than the definition allows.
    if p.url == near.URL:
        out["documentation"] = (
            f"Great-circle distance; without a distance, {near.DEFAULT_DISTANCE_KM:g} km. Units (UCUM): "
            + ", ".join(near.UNITS_KM) + ". Results are not sorted by distance."
        )
    elif p.inline:
        out["documentation"] = (f"Chained searches into the resource inside the {p.base} only "
                                f"({p.code}.[parameter], one level), and :missing.")
    return out


def _resource(rt: str, conditional_delete: str, supported_profiles: dict[str, list[str]]) -> dict[str, Any]:
    params = get_registry().params_for(rt)
    supported = sorted((p for p in params.values() if p.supported), key=lambda p: p.code)
    # A parameter whose target is held inside the resource (Bundle composition) is searched by
    # chaining only: there is nothing to include.
    references = [p.code for p in supported if p.type == "reference" and not p.inline]
    revinclude = sorted(
        f"{other}:{p.code}"
        for other in served_types()
        for p in get_registry().params_for(other).values()
        if p.supported and p.type == "reference" and not p.inline and (not p.targets or rt in p.targets)
    )
    out = {
        "type": rt,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rt}",
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": conditional_delete,
        "searchInclude": ["*"] + [f"{rt}:{code}" for code in references],
        "searchRevInclude": revinclude,
        "searchParam": [_param(p) for p in supported],
    }
    operations = [*OPERATIONS.get(rt, []), ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate")]
    out["operation"] = [{"name": name, "definition": url} for name, url in operations]
    if supported_profiles.get(rt):
        out["supportedProfile"] = supported_profiles[rt]
    return out


def _security(base_url: str) -> dict[str, Any]:
    """SMART on FHIR's security block (SMART App Launch 1.0/2.0): the OAuth URIs and the service."""
    from fhir_server.auth.urls import authorize_url, introspect_url, revoke_url, token_url

    uris = [("authorize", authorize_url(base_url)), ("token", token_url(base_url)),
            ("introspect", introspect_url(base_url)), ("revoke", revoke_url(base_url))]
    return {
        "cors": True,
        "service": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": name, "valueUri": uri} for name, uri in uris],
        }],
    }


def build_capability_statement(base_url: str, conditional_delete: str = "single", smart: bool = False,
                               supported_profiles: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """``supported_profiles``: resource type -> canonicals of the profiles the server validates."""
    profiles = supported_profiles or {}
    common = [_param(p) for code in COMMON if (p := get_registry().get("Patient", code)) is not None and p.supported]
    rest: dict[str, Any] = {"mode": "server"}
    if smart:
        rest["security"] = _security(base_url)
    return {
        "resourceType": "CapabilityStatement",
        "instantiates": [f"{BULK}/CapabilityStatement/bulk-data"],
        "status": "active",
        "date": now_instant(),
        "publisher": "fhir-server contributors",
        "kind": "instance",
        "software": {"name": "fhir-server", "version": __version__},
        "implementation": {"description": "FHIR R4 facade server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["json", "xml", "application/fhir+json", "application/fhir+xml"],
        "rest": [
            {
                **rest,
                "resource": [_resource(rt, conditional_delete, profiles) for rt in served_types()],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "searchParam": common,
                "operation": [{"name": name, "definition": url} for name, url in SYSTEM_OPERATIONS],
            }
        ],
    }
