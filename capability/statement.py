"""The CapabilityStatement, generated from what the server really does.

Every resource type listed is served, with exactly the interactions and search parameters the
engine implements; nothing is advertised that the server would refuse.
"""

from __future__ import annotations

from typing import Any

from fhir_server import __version__
from fhir_server.model.instant import now_instant
from fhir_server.model.registry import served_types
from fhir_server.search.parse import COMMON_PARAMS

TYPE_INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"]
SYSTEM_INTERACTIONS = ["history-system", "search-system"]

_PARAM_DOCS = {
    "_id": ("http://hl7.org/fhir/SearchParameter/Resource-id", "Logical id of the resource"),
    "_lastUpdated": (
        "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
        "When the resource version last changed (all prefixes; implicit precision ranges)",
    ),
}


def _search_params() -> list[dict[str, Any]]:
    out = []
    for name, ptype in COMMON_PARAMS.items():
        definition, doc = _PARAM_DOCS[name]
        out.append({"name": name, "definition": definition, "type": ptype, "documentation": doc})
    return out


def build_capability_statement(base_url: str) -> dict[str, Any]:
    params = _search_params()
    resources = [
        {
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
            "searchParam": params,
        }
        for rt in served_types()
    ]
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
                "resource": resources,
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "searchParam": params,
            }
        ],
    }
