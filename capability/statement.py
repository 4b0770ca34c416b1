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
from fhir_server.search.registry import SearchParamDef, get_registry

TYPE_INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"]
SYSTEM_INTERACTIONS = ["history-system", "search-system"]
COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")


def _param(p: SearchParamDef) -> dict[str, Any]:
    return {"name": p.code, "definition": p.url, "type": p.type}


def _resource(rt: str) -> dict[str, Any]:
    params = get_registry().params_for(rt)
    supported = sorted((p for p in params.values() if p.supported), key=lambda p: p.code)
    references = [p.code for p in supported if p.type == "reference"]
    revinclude = sorted(
        f"{other}:{p.code}"
        for other in served_types()
        for p in get_registry().params_for(other).values()
        if p.supported and p.type == "reference" and (not p.targets or rt in p.targets)
    )
    return {
        "type": rt,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rt}",
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchInclude": ["*"] + [f"{rt}:{code}" for code in references],
        "searchRevInclude": revinclude,
        "searchParam": [_param(p) for p in supported],
    }


def build_capability_statement(base_url: str) -> dict[str, Any]:
    common = [_param(p) for code in COMMON if (p := get_registry().get("Patient", code)) is not None and p.supported]
    return {
        "resourceType": "CapabilityStatement",
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
                "mode": "server",
                "resource": [_resource(rt) for rt in served_types()],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "searchParam": common,
            }
        ],
    }
