"""Reference costs for one Patient: JSON codecs and fhir.resources, so other micro workloads (the XML
codec, our validator) can state themselves as ratios to them via `ratio_to="patient.<name>"`.

ARCHITECTURE.md measured, for a 2.7 KB Patient: fhir.resources parse + validate 614 us,
model_dump_json 1,305 us, model_dump_xml 9,773 us, orjson.dumps(dict) 1.8 us.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import orjson

from bench.data import patient_bytes
from bench.micro import Report, per_call_us


def run(report: Report) -> None:
    raw = patient_bytes()
    as_dict = orjson.loads(raw)
    report("patient.orjson.loads", per_call_us(lambda: orjson.loads(raw)), "us")
    report("patient.orjson.dumps", per_call_us(lambda: orjson.dumps(as_dict)), "us")
    report("patient.json.loads", per_call_us(lambda: json.loads(raw)), "us", ratio_to="patient.orjson.loads")

    # Our exact-decimal JSON I/O; optional so the bench runs while the package is being built.
    jsonio: Any
    try:
        jsonio = importlib.import_module("fhir_server.model.jsonio")
    except ImportError:
        jsonio = None
    if jsonio is not None:
        exact = jsonio.loads(raw)
        report(
            "patient.jsonio.loads",
            per_call_us(lambda: jsonio.loads(raw)),
            "us",
            ratio_to="patient.orjson.loads",
        )
        report(
            "patient.jsonio.dumps",
            per_call_us(lambda: jsonio.dumps(exact)),
            "us",
            ratio_to="patient.orjson.dumps",
        )

    from fhir.resources.R4B.patient import Patient

    model = Patient.model_validate_json(raw)
    report(
        "patient.fhir_resources.parse_validate", per_call_us(lambda: Patient.model_validate_json(raw)), "us"
    )
    report("patient.fhir_resources.dump_json", per_call_us(lambda: model.model_dump_json()), "us")
    report("patient.fhir_resources.dump_xml", per_call_us(lambda: model.model_dump_xml(), budget_s=0.5), "us")
