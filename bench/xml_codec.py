"""Micro-benchmark: our FHIR JSON→XML (``fhir_server.model.xml_codec``) against fhir.resources R4B.

Same resources for both sides: a Synthea Patient, a Synthea Observation and a 50-entry searchset
Bundle of Synthea Observations (from ../shared when present, else small built-in stand-ins).  The
baseline is ``model_dump_xml()`` on an already validated R4B model, so model construction is not
charged to it; ours starts from the dict ``jsonio.loads`` gives.  Each number is the best of several
timed batches (the machine is shared, and the minimum is the least disturbed estimate), in µs per
resource (the Bundle counts as one resource).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from fhir_server.model import jsonio
from fhir_server.model.xml_codec import resource_to_xml, xml_to_resource

Report = Callable[..., None]

_SYNTHEA_DIR = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea" / "small-10-patients"
)
_BUNDLE_ENTRIES = 50

_FALLBACK_PATIENT = b"""{"resourceType": "Patient", "id": "bench-patient-1",
 "text": {"status": "generated", "div": "<div xmlns=\\"http://www.w3.org/1999/xhtml\\">Synthetic patient.</div>"},
 "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
   "valueAddress": {"city": "Boston", "state": "Massachusetts", "country": "US"}},
  {"url": "http://synthetichealth.github.io/synthea/disability-adjusted-life-years", "valueDecimal": 0.0132}],
 "identifier": [{"system": "urn:example:bench", "value": "bench-patient-1"}],
 "name": [{"use": "official", "family": "Example", "given": ["Bench"], "prefix": ["Ms."]}],
 "telecom": [{"system": "phone", "value": "555-000-0000", "use": "home"}],
 "gender": "female", "birthDate": "1971-04-05",
 "address": [{"line": ["1 Example Street"], "city": "Everett", "state": "Massachusetts", "country": "US"}],
 "multipleBirthBoolean": false}"""

_FALLBACK_OBSERVATION = b"""{"resourceType": "Observation", "id": "bench-obs-1", "status": "final",
 "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
   "code": "vital-signs", "display": "vital-signs"}]}],
 "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}], "text": "Body Height"},
 "subject": {"reference": "Patient/bench-patient-1"}, "effectiveDateTime": "2020-01-01T10:00:00-05:00",
 "issued": "2020-01-01T10:00:00.000-05:00",
 "valueQuantity": {"value": 163.7, "unit": "cm", "system": "http://unitsofmeasure.org", "code": "cm"}}"""


def _resources() -> tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(source, Patient, Observation, Observations for the Bundle)."""
    if _SYNTHEA_DIR.is_dir():
        for path in sorted(_SYNTHEA_DIR.glob("*.json")):
            bundle = jsonio.loads(path.read_bytes())
            resources = [e["resource"] for e in bundle.get("entry", [])]
            patients = [r for r in resources if r["resourceType"] == "Patient"]
            observations = [r for r in resources if r["resourceType"] == "Observation"]
            if patients and len(observations) >= _BUNDLE_ENTRIES:
                return f"synthea:{path.name}", patients[0], observations[0], observations[:_BUNDLE_ENTRIES]
    observation = jsonio.loads(_FALLBACK_OBSERVATION)
    many = []
    for i in range(_BUNDLE_ENTRIES):
        obs = jsonio.loads(_FALLBACK_OBSERVATION)
        obs["id"] = f"bench-obs-{i}"
        many.append(obs)
    return "built-in stand-ins", jsonio.loads(_FALLBACK_PATIENT), observation, many


def _searchset(observations: list[dict[str, Any]]) -> dict[str, Any]:
    base = "http://localhost:8080/fhir"
    return {
        "resourceType": "Bundle",
        "id": "bench-searchset",
        "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
        "type": "searchset",
        "total": len(observations),
        "link": [{"relation": "self", "url": f"{base}/Observation?_count={len(observations)}"}],
        "entry": [
            {
                "fullUrl": f"{base}/Observation/{o['id']}",
                "resource": o,
                "search": {"mode": "match"},
            }
            for o in observations
        ],
    }


def _best_us(fn: Callable[[], object], batch_seconds: float = 0.05, repeats: int = 5) -> float:
    """Best-of-``repeats`` time per call in µs, with batches of at least ``batch_seconds``."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= batch_seconds:
            break
        number = max(number * 2, int(number * batch_seconds / max(elapsed, 1e-9)) + 1)
    best = elapsed / number
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


def run(report: Report) -> None:
    from fhir.resources.R4B import get_fhir_model_class  # heavy import: only when this bench runs

    _source, patient, observation, observations = _resources()
    for label, resource in (
        ("patient", patient),
        ("observation", observation),
        ("searchset_bundle_50", _searchset(observations)),
    ):
        model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        xml = resource_to_xml(resource)
        if xml_to_resource(xml) != resource:  # a fast wrong answer would be no answer
            raise AssertionError(f"xml_codec round trip changed the {label}")

        base_us = _best_us(model.model_dump_xml)
        ours_us = _best_us(partial(resource_to_xml, resource))
        read_us = _best_us(partial(xml_to_resource, xml))

        base_name = f"xml_codec.{label}.fhir_resources_model_dump_xml"
        report(base_name, base_us, "us")
        report(f"xml_codec.{label}.json_to_xml", ours_us, "us", ratio_to=base_name)
        report(f"xml_codec.{label}.speedup_vs_fhir_resources", base_us / ours_us, "x")
        report(f"xml_codec.{label}.xml_to_json", read_us, "us")


if __name__ == "__main__":

    def _print(name: str, value: float, unit: str, ratio_to: str | None = None) -> None:
        print(f"{name:60s} {value:12.1f} {unit}" + (f"  (vs {ratio_to})" if ratio_to else ""))

    run(_print)
