"""The Patient every workload serves or sends: a real Synthea Patient when ../shared is present."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from bench.bodies import CountedBody

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTHEA_DIR = REPO_ROOT.parent / "shared" / "data" / "synthea" / "small-10-patients"

# The product and its bench must run without ../shared; this stands in with the same shape (~2 KB).
_FALLBACK_PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "bench-patient-1",
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">Synthetic patient for benchmarks.</div>',
    },
    "extension": [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
            "valueString": "Ann Example",
        },
        {
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
            "valueAddress": {"city": "Boston", "state": "Massachusetts", "country": "US"},
        },
    ],
    "identifier": [
        {"system": "urn:example:bench", "value": "bench-patient-1"},
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR",
                        "display": "Medical Record Number",
                    }
                ],
                "text": "Medical Record Number",
            },
            "system": "http://hospital.example.org",
            "value": "MRN-0001",
        },
    ],
    "name": [{"use": "official", "family": "Example", "given": ["Bench"], "prefix": ["Ms."]}],
    "telecom": [{"system": "phone", "value": "555-000-0000", "use": "home"}],
    "gender": "female",
    "birthDate": "1971-04-05",
    "address": [
        {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/geolocation",
                    "extension": [
                        {"url": "latitude", "valueDecimal": 42.4697235419671},
                        {"url": "longitude", "valueDecimal": -71.09392979968648},
                    ],
                }
            ],
            "line": ["1 Example Street"],
            "city": "Everett",
            "state": "Massachusetts",
            "postalCode": "02149",
            "country": "US",
        }
    ],
    "maritalStatus": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "M"}
        ],
        "text": "M",
    },
    "multipleBirthBoolean": False,
    "communication": [
        {
            "language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": "en", "display": "English"}],
                "text": "English",
            }
        }
    ],
}


def _dumps(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@cache
def patient_source() -> tuple[str, dict[str, Any]]:
    """(where it came from, the Patient) — the first Synthea bundle by name, for a stable choice."""
    if SYNTHEA_DIR.is_dir():
        for path in sorted(SYNTHEA_DIR.glob("*.json")):
            bundle = json.loads(path.read_bytes())
            for entry in bundle.get("entry", []):
                resource = entry.get("resource", {})
                if resource.get("resourceType") == "Patient":
                    return f"synthea:{path.name}", resource
    return "bundled synthetic Patient", copy.deepcopy(_FALLBACK_PATIENT)


def patient() -> dict[str, Any]:
    return copy.deepcopy(patient_source()[1])


@cache
def patient_bytes() -> bytes:
    return _dumps(patient_source()[1])


def create_body(run_tag: str) -> CountedBody:
    """The Patient without its id, with a name and identifier that differ on every request.

    Distinct bodies keep a server from answering creates out of any cache keyed by content, and
    keep a future uniqueness check on identifiers from turning the workload into a stream of 4xx.
    """
    resource = patient()
    resource.pop("id", None)
    resource.pop("meta", None)
    marker = CountedBody.MARKER
    names = resource.setdefault("name", [{}])
    names[0]["given"] = [f"Bench{marker}"] + list(names[0].get("given", []))[1:]
    identifiers = resource.setdefault("identifier", [{}])
    identifiers[0] = {"system": "urn:example:fhir-server-bench", "value": f"{run_tag}-{marker}"}
    return CountedBody.from_template(_dumps(resource))
