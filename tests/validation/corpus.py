"""Broken variants of valid Inferno resources: each breaks one rule of a US Core profile.

A variant names its source (an Inferno bundle entry, valid against the profile), the profile, the
change, and the issue the validator must report: severity, issue code, FHIRPath expression and the
rule (element id or constraint key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.validation.data import US_CORE, resource

P355 = "uscore_bundle_patient_355.json"
P85 = "uscore_bundle_patient_85.json"
PCT = "uscore_bundle_patient_client_test.json"

V6 = "|6.1.0"
V3 = "|3.1.1"
RACE = US_CORE + "us-core-race"
ETHNICITY = US_CORE + "us-core-ethnicity"
BIRTHSEX = US_CORE + "us-core-birthsex"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
CDCREC = "urn:oid:2.16.840.1.113883.6.238"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class Expect:
    code: str
    expression: str
    rule: str  # the element id (ProfileIssue.element) or the constraint key
    severity: str = "error"


@dataclass(frozen=True)
class Variant:
    name: str
    source: tuple[str, int]
    profile: str
    mutate: Callable[[dict[str, Any]], Any]
    expect: Expect

    def broken(self) -> dict[str, Any]:
        r = resource(*self.source)
        self.mutate(r)
        return r

    def original(self) -> dict[str, Any]:
        return resource(*self.source)


def ext(r: dict[str, Any], url: str) -> dict[str, Any]:
    return next(e for e in r["extension"] if e["url"] == url)


def sub(e: dict[str, Any], url: str) -> dict[str, Any]:
    return next(x for x in e["extension"] if x["url"] == url)


def drop(*keys: Any) -> Callable[[dict[str, Any]], None]:
    def f(r: dict[str, Any]) -> None:
        target: Any = r
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return f


def put(value: Any, *keys: Any) -> Callable[[dict[str, Any]], None]:
    def f(r: dict[str, Any]) -> None:
        target: Any = r
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return f


def steps(*fs: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def f(r: dict[str, Any]) -> None:
        for g in fs:
            g(r)

    return f


def _race_code(code: str) -> Callable[[dict[str, Any]], None]:
    def f(r: dict[str, Any]) -> None:
        sub(ext(r, RACE), "ombCategory")["valueCoding"]["code"] = code

    return f


def _drop_race_text(r: dict[str, Any]) -> None:
    e = ext(r, RACE)
    e["extension"] = [x for x in e["extension"] if x["url"] != "text"]


def _race_value(r: dict[str, Any]) -> None:
    ext(r, RACE)["valueString"] = "White"


def _ethnicity_code(r: dict[str, Any]) -> None:
    sub(ext(r, ETHNICITY), "ombCategory")["valueCoding"]["code"] = "2106-3"  # a race, not an ethnicity


def _birthsex(code: str) -> Callable[[dict[str, Any]], None]:
    def f(r: dict[str, Any]) -> None:
        ext(r, BIRTHSEX)["valueCode"] = code

    return f


def _category(code: str, system: str = "http://terminology.hl7.org/CodeSystem/observation-category") -> Any:
    return put([{"coding": [{"system": system, "code": code}]}], "category")


def _components(keep: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], None]:
    def f(r: dict[str, Any]) -> None:
        r["component"] = [c for c in r["component"] if keep(c)]

    return f


def _codes(c: dict[str, Any]) -> set[str]:
    return {x.get("code") for x in c["code"].get("coding", [])}


def _bp_unit(r: dict[str, Any]) -> None:
    comp = next(c for c in r["component"] if "8480-6" in _codes(c))
    comp["valueQuantity"]["code"] = "mmHg"


def _npi(value: str) -> Callable[[dict[str, Any]], None]:
    def f(r: dict[str, Any]) -> None:
        r.setdefault("identifier", []).append({"system": "http://hl7.org/fhir/sid/us-npi", "value": value})

    return f


def _name_without_parts(r: dict[str, Any]) -> None:
    r["name"] = [{"use": "official", "text": "Somebody"}]


def _unknown_modifier(r: dict[str, Any]) -> None:
    r["modifierExtension"] = [
        {"url": "http://example.org/fhir/StructureDefinition/no-such", "valueBoolean": True}
    ]


def _coding_system(value: str, *keys: Any) -> Callable[[dict[str, Any]], None]:
    return put(value, *keys)


VARIANTS: list[Variant] = [
    # -- Patient ---------------------------------------------------------------------------------
    Variant(
        "patient-6 missing identifier",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        drop("identifier"),
        Expect("required", "Patient.identifier", "Patient.identifier"),
    ),
    Variant(
        "patient-3 missing identifier",
        (P355, 0),
        US_CORE + "us-core-patient" + V3,
        drop("identifier"),
        Expect("required", "Patient.identifier", "Patient.identifier"),
    ),
    Variant(
        "patient identifier without system",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        drop("identifier", 0, "system"),
        Expect("required", "Patient.identifier[0].system", "Patient.identifier.system"),
    ),
    Variant(
        "patient identifier without value",
        (P355, 0),
        US_CORE + "us-core-patient" + V3,
        drop("identifier", 1, "value"),
        Expect("required", "Patient.identifier[1].value", "Patient.identifier.value"),
    ),
    Variant(
        "patient missing name",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        drop("name"),
        Expect("required", "Patient.name", "Patient.name"),
    ),
    Variant(
        "patient-6 name without family or given (us-core-6)",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        _name_without_parts,
        Expect("invariant", "Patient.name[0]", "us-core-6"),
    ),
    Variant(
        "patient-3 name without family or given (us-core-8)",
        (P355, 0),
        US_CORE + "us-core-patient" + V3,
        _name_without_parts,
        Expect("invariant", "Patient.name[0]", "us-core-8"),
    ),
    Variant(
        "patient wrong gender code",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        put("M", "gender"),
        Expect("code-invalid", "Patient.gender", ""),
    ),
    Variant(
        "patient missing gender",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        drop("gender"),
        Expect("required", "Patient.gender", "Patient.gender"),
    ),
    Variant(
        "patient-3 missing gender",
        (P355, 0),
        US_CORE + "us-core-patient" + V3,
        drop("gender"),
        Expect("required", "Patient.gender", "Patient.gender"),
    ),
    Variant(
        "race: ombCategory code outside OMB categories",
        (P355, 0),
        US_CORE + "us-core-patient" + V3,
        _race_code("2108-9"),  # European: a detailed race, not an OMB category
        Expect(
            "code-invalid",
            "Patient.extension[0].extension[0].value.ofType(Coding)",
            "Extension.extension:ombCategory.value[x]:valueCoding",
        ),
    ),
    Variant(
        "race: ombCategory code that cdcrec does not have",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        _race_code("9999-9"),
        Expect(
            "code-invalid",
            "Patient.extension[0].extension[0].value.ofType(Coding)",
            "Extension.extension:ombCategory.value[x]",
        ),
    ),
    Variant(
        "race: text sub-extension missing",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        _drop_race_text,
        Expect("required", "Patient.extension[0].extension", "Extension.extension:text"),
    ),
    Variant(
        "race: a value on the complex extension",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        _race_value,
        Expect("structure", "Patient.extension[0].value.ofType(string)", "Extension.value[x]"),
    ),
    Variant(
        "ethnicity: a race code as OMB ethnicity",
        (P355, 0),
        US_CORE + "us-core-patient" + V3,
        _ethnicity_code,
        Expect(
            "code-invalid",
            "Patient.extension[1].extension[0].value.ofType(Coding)",
            "Extension.extension:ombCategory.value[x]",
        ),
    ),
    Variant(
        "birthsex outside its value set",
        (P355, 0),
        US_CORE + "us-core-patient" + V3,
        _birthsex("X"),
        Expect("code-invalid", "Patient.extension[2].value.ofType(code)", "Extension.value[x]:valueCode"),
    ),
    Variant(
        "telecom without system",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        put([{"value": "555-0100"}], "telecom"),
        Expect("required", "Patient.telecom[0].system", "Patient.telecom.system"),
    ),
    Variant(
        "communication without language",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        put([{"preferred": True}], "communication"),
        Expect("required", "Patient.communication[0].language", ""),
    ),  # R4 itself requires it
    Variant(
        "unknown modifier extension",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        _unknown_modifier,
        Expect("extension", "Patient.modifierExtension[0]", "Extension"),
    ),
    Variant(
        "us-core-sex as a Coding (6.1.0 wants a code)",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        lambda r: r["extension"].append(
            {
                "url": US_CORE + "us-core-sex",
                "valueCoding": {"system": "http://snomed.info/sct", "code": "248153007"},
            }
        ),
        Expect("structure", "Patient.extension[4].value.ofType(Coding)", "Extension.value[x]"),
    ),
    Variant(
        "ele-1: an element with only an id",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        put([{"id": "n1"}], "name"),
        Expect("invariant", "Patient.name[0]", ""),
    ),
    Variant(
        "extension not allowed in this context",
        (P355, 0),
        US_CORE + "us-core-patient" + V6,
        lambda r: (
            r["name"][0]
            .setdefault("extension", [])
            .append({"url": RACE, "extension": [{"url": "text", "valueString": "x"}]})
        ),
        Expect("extension", "Patient.name[0].extension[0]", "Extension"),
    ),
    # -- vital signs -------------------------------------------------------------------------------
    Variant(
        "body weight without the vital-signs category",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        _category("laboratory"),
        Expect("required", "Observation.category", "Observation.category:VSCat"),
    ),
    Variant(
        "vitalsigns (R4) without the vital-signs category",
        (P355, 229),
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
        _category("laboratory"),
        Expect("required", "Observation.category", "Observation.category:VSCat"),
    ),
    Variant(
        "body weight with another LOINC code",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        put({"coding": [{"system": LOINC, "code": "8302-2"}]}, "code"),
        Expect("value", "Observation.code", "Observation.code"),
    ),
    Variant(
        "body weight in a unit outside UCUM body weights",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        steps(put("stone", "valueQuantity", "code"), put("stone", "valueQuantity", "unit")),
        Expect(
            "code-invalid",
            "Observation.value.ofType(Quantity).code",
            "Observation.value[x]:valueQuantity.code",
        ),
    ),
    Variant(
        "body weight quantity not in UCUM",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        put("http://example.org/units", "valueQuantity", "system"),
        Expect(
            "value", "Observation.value.ofType(Quantity).system", "Observation.value[x]:valueQuantity.system"
        ),
    ),
    Variant(
        "R4 bodyweight as a string (closed type slicing on value[x])",
        (P355, 229),
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
        steps(drop("valueQuantity"), put("72 kg", "valueString")),
        Expect("structure", "Observation.value.ofType(string)", "Observation.value[x]"),
    ),
    Variant(
        "value and dataAbsentReason together (obs-6)",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        put(
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}
                ]
            },
            "dataAbsentReason",
        ),
        Expect("invariant", "Observation", "obs-6"),
    ),
    Variant(
        "no value, no dataAbsentReason (vs-2)",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        drop("valueQuantity"),
        Expect("invariant", "Observation", "vs-2"),
    ),
    Variant(
        "effective to the month only (vs-1)",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        steps(lambda r: r.pop("effectivePeriod", None), put("2020-01", "effectiveDateTime")),
        Expect("invariant", "Observation.effective.ofType(dateTime)", "vs-1"),
    ),
    Variant(
        "vital sign without effective",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        steps(lambda r: r.pop("effectiveDateTime", None), lambda r: r.pop("effectivePeriod", None)),
        Expect("required", "Observation.effective", "Observation.effective[x]"),
    ),
    Variant(
        "vital sign about a Group (wrong reference type)",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        put({"reference": "Group/g1"}, "subject"),
        Expect("structure", "Observation.subject.reference", "Observation.subject"),
    ),
    Variant(
        "vital sign without subject",
        (PCT, 35),
        US_CORE + "us-core-body-weight" + V6,
        drop("subject"),
        Expect("required", "Observation.subject", "Observation.subject"),
    ),
    Variant(
        "blood pressure without systolic",
        (PCT, 32),
        US_CORE + "us-core-blood-pressure" + V6,
        _components(lambda c: "8480-6" not in _codes(c)),
        Expect("required", "Observation.component", "Observation.component:systolic"),
    ),
    Variant(
        "R4 bp without diastolic",
        (P355, 265),
        "http://hl7.org/fhir/StructureDefinition/bp",
        _components(lambda c: "8462-4" not in _codes(c)),
        Expect("required", "Observation.component", "Observation.component:DiastolicBP"),
    ),
    Variant(
        "blood pressure systolic in mmHg instead of mm[Hg]",
        (PCT, 32),
        US_CORE + "us-core-blood-pressure" + V6,
        _bp_unit,
        Expect(
            "value",
            "Observation.component[0].value.ofType(Quantity).code",
            "Observation.component:systolic.value[x].code",
        ),
    ),
    Variant(
        "pulse oximetry without the 59408-5 coding",
        (P85, 198),
        US_CORE + "us-core-pulse-oximetry" + V6,
        lambda r: r["code"].__setitem__("coding", [c for c in r["code"]["coding"] if c["code"] != "59408-5"]),
        Expect("required", "Observation.code.coding", "Observation.code.coding:PulseOx"),
    ),
    Variant(
        "heart rate in the wrong unit",
        (P355, 312),
        US_CORE + "us-core-heart-rate" + V6,
        put("/s", "valueQuantity", "code"),
        Expect("value", "Observation.value.ofType(Quantity).code", "Observation.value[x]:valueQuantity.code"),
    ),
    # -- other Observations ----------------------------------------------------------------------
    Variant(
        "smoking status preliminary",
        (P355, 7),
        US_CORE + "us-core-smokingstatus" + V6,
        put("preliminary", "status"),
        Expect("code-invalid", "Observation.status", "Observation.status"),
    ),
    Variant(
        "smoking status without the social-history category",
        (P355, 7),
        US_CORE + "us-core-smokingstatus" + V6,
        _category("exam"),
        Expect("required", "Observation.category", "Observation.category:SocialHistory"),
    ),
    Variant(
        "lab result without the laboratory category",
        (P355, 181),
        US_CORE + "us-core-observation-lab" + V6,
        _category("exam"),
        Expect("required", "Observation.category", "Observation.category:us-core"),
    ),
    Variant(
        "lab result, 3.1.1, without the laboratory category",
        (P355, 181),
        US_CORE + "us-core-observation-lab" + V3,
        _category("exam"),
        Expect("required", "Observation.category", "Observation.category:Laboratory"),
    ),
    Variant(
        "lab result without subject",
        (P355, 181),
        US_CORE + "us-core-observation-lab" + V6,
        drop("subject"),
        Expect("required", "Observation.subject", "Observation.subject"),
    ),
    # -- Condition -------------------------------------------------------------------------------
    Variant(
        "problem without category",
        (P355, 461),
        US_CORE + "us-core-condition-problems-health-concerns" + V6,
        drop("category"),
        Expect("required", "Condition.category", "Condition.category"),
    ),
    Variant(
        "problem with abatement while active (con-4)",
        (P355, 461),
        US_CORE + "us-core-condition-problems-health-concerns" + V6,
        steps(
            put("2020-01-01", "abatementDateTime"),
            put(
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "clinicalStatus",
            ),
        ),
        Expect("invariant", "Condition", "con-4"),
    ),
    Variant(
        "condition (3.1.1) without code",
        (P355, 17),
        US_CORE + "us-core-condition" + V3,
        drop("code"),
        Expect("required", "Condition.code", "Condition.code"),
    ),
    Variant(
        "condition (3.1.1) about a Practitioner",
        (P355, 17),
        US_CORE + "us-core-condition" + V3,
        put({"reference": "Practitioner/p1"}, "subject"),
        Expect("structure", "Condition.subject.reference", "Condition.subject"),
    ),
    Variant(
        "condition entered-in-error with a clinical status (con-5)",
        (P355, 17),
        US_CORE + "us-core-condition" + V3,
        put(
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "entered-in-error",
                    }
                ]
            },
            "verificationStatus",
        ),
        Expect("invariant", "Condition", "con-5"),
    ),
    Variant(
        "condition (3.1.1) without category",
        (P355, 17),
        US_CORE + "us-core-condition" + V3,
        drop("category"),
        Expect("required", "Condition.category", "Condition.category"),
    ),
    # -- AllergyIntolerance, Immunization, MedicationRequest, Procedure ----------------------------
    Variant(
        "allergy without code",
        (P355, 30),
        US_CORE + "us-core-allergyintolerance" + V6,
        drop("code"),
        Expect("required", "AllergyIntolerance.code", "AllergyIntolerance.code"),
    ),
    Variant(
        "allergy entered-in-error with clinical status (ait-2)",
        (P355, 30),
        US_CORE + "us-core-allergyintolerance" + V6,
        put(
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                        "code": "entered-in-error",
                    }
                ]
            },
            "verificationStatus",
        ),
        Expect("invariant", "AllergyIntolerance", "ait-2"),
    ),
    Variant(
        "allergy for a Group",
        (P355, 30),
        US_CORE + "us-core-allergyintolerance" + V6,
        put({"reference": "Group/1"}, "patient"),
        Expect("structure", "AllergyIntolerance.patient.reference", "AllergyIntolerance.patient"),
    ),
    Variant(
        "immunization (3.1.1) without primarySource",
        (P355, 79),
        US_CORE + "us-core-immunization" + V3,
        drop("primarySource"),
        Expect("required", "Immunization.primarySource", "Immunization.primarySource"),
    ),
    Variant(
        "immunization of a Group",
        (P355, 79),
        US_CORE + "us-core-immunization" + V6,
        put({"reference": "Group/1"}, "patient"),
        Expect("structure", "Immunization.patient.reference", "Immunization.patient"),
    ),
    Variant(
        "order without requester (us-core-21)",
        (P355, 71),
        US_CORE + "us-core-medicationrequest" + V6,
        steps(drop("requester"), put("order", "intent")),
        Expect("invariant", "MedicationRequest", "us-core-21"),
    ),
    Variant(
        "medication request for a Group",
        (P355, 71),
        US_CORE + "us-core-medicationrequest" + V6,
        put({"reference": "Group/1"}, "subject"),
        Expect("structure", "MedicationRequest.subject.reference", "MedicationRequest.subject"),
    ),
    Variant(
        "medication request (3.1.1) without authoredOn",
        (P355, 71),
        US_CORE + "us-core-medicationrequest" + V3,
        drop("authoredOn"),
        Expect("required", "MedicationRequest.authoredOn", "MedicationRequest.authoredOn"),
    ),
    Variant(
        "completed procedure without performed (us-core-7)",
        (P355, 22),
        US_CORE + "us-core-procedure" + V6,
        steps(
            lambda r: r.pop("performedPeriod", None),
            lambda r: r.pop("performedDateTime", None),
            put("completed", "status"),
        ),
        Expect("invariant", "Procedure", "us-core-7"),
    ),
    Variant(
        "procedure without code",
        (P355, 22),
        US_CORE + "us-core-procedure" + V6,
        drop("code"),
        Expect("required", "Procedure.code", "Procedure.code"),
    ),
    # -- Encounter -------------------------------------------------------------------------------
    Variant(
        "encounter without type",
        (P355, 5),
        US_CORE + "us-core-encounter" + V6,
        drop("type"),
        Expect("required", "Encounter.type", "Encounter.type"),
    ),
    Variant(
        "encounter identifier without system",
        (P355, 5),
        US_CORE + "us-core-encounter" + V6,
        drop("identifier", 0, "system"),
        Expect("required", "Encounter.identifier[0].system", "Encounter.identifier.system"),
    ),
    Variant(
        "encounter of a Practitioner",
        (P355, 5),
        US_CORE + "us-core-encounter" + V6,
        put({"reference": "Practitioner/p1"}, "subject"),
        Expect("structure", "Encounter.subject.reference", "Encounter.subject"),
    ),
    Variant(
        "participant individual that is a Patient",
        (P355, 5),
        US_CORE + "us-core-encounter" + V6,
        put({"reference": "Patient/p1"}, "participant", 0, "individual"),
        Expect(
            "structure", "Encounter.participant[0].individual.reference", "Encounter.participant.individual"
        ),
    ),
    Variant(
        "period ending before it starts (per-1)",
        (P355, 5),
        US_CORE + "us-core-encounter" + V6,
        put({"start": "2020-01-02T10:00:00Z", "end": "2020-01-01T10:00:00Z"}, "period"),
        Expect("invariant", "Encounter.period", "per-1"),
    ),
    # -- DiagnosticReport, DocumentReference -----------------------------------------------------
    Variant(
        "lab report without the LAB category",
        (P355, 401),
        US_CORE + "us-core-diagnosticreport-lab" + V6,
        _category("RAD", "http://terminology.hl7.org/CodeSystem/v2-0074"),
        Expect("required", "DiagnosticReport.category", "DiagnosticReport.category:LaboratorySlice"),
    ),
    Variant(
        "final lab report without effective (us-core-8)",
        (P355, 401),
        US_CORE + "us-core-diagnosticreport-lab" + V6,
        steps(lambda r: r.pop("effectiveDateTime", None), lambda r: r.pop("effectivePeriod", None)),
        Expect("invariant", "DiagnosticReport", "us-core-8"),
    ),
    Variant(
        "final lab report without issued (us-core-9)",
        (P355, 401),
        US_CORE + "us-core-diagnosticreport-lab" + V6,
        drop("issued"),
        Expect("invariant", "DiagnosticReport", "us-core-9"),
    ),
    Variant(
        "note without category",
        (P355, 8),
        US_CORE + "us-core-diagnosticreport-note" + V6,
        drop("category"),
        Expect("required", "DiagnosticReport.category", "DiagnosticReport.category"),
    ),
    Variant(
        "document attachment without url or data (us-core-6)",
        (P355, 9),
        US_CORE + "us-core-documentreference" + V6,
        drop("content", 0, "attachment", "data"),
        Expect("invariant", "DocumentReference.content[0].attachment", "us-core-6"),
    ),
    Variant(
        "document without category",
        (P355, 9),
        US_CORE + "us-core-documentreference" + V6,
        drop("category"),
        Expect("required", "DocumentReference.category", "DocumentReference.category"),
    ),
    Variant(
        "document of an unknown type code",
        (P355, 9),
        US_CORE + "us-core-documentreference" + V6,
        put({"coding": [{"system": "http://example.org/doc-types", "code": "x"}]}, "type"),
        Expect("code-invalid", "DocumentReference.type", "DocumentReference.type"),
    ),
    Variant(
        "document without type",
        (P355, 9),
        US_CORE + "us-core-documentreference" + V3,
        drop("type"),
        Expect("required", "DocumentReference.type", "DocumentReference.type"),
    ),
    # -- CareTeam, Goal, Organization, Practitioner, Location, Device, Coverage --------------------
    Variant(
        "care team participant without member",
        (P355, 28),
        US_CORE + "us-core-careteam" + V6,
        drop("participant", 0, "member"),
        Expect("required", "CareTeam.participant[0].member", "CareTeam.participant.member"),
    ),
    Variant(
        "care team participant without role",
        (P355, 28),
        US_CORE + "us-core-careteam" + V6,
        drop("participant", 0, "role"),
        Expect("required", "CareTeam.participant[0].role", "CareTeam.participant.role"),
    ),
    Variant(
        "goal target due as a Duration (closed type slicing)",
        (P355, 440),
        US_CORE + "us-core-goal" + V3,
        steps(
            drop("target", 0, "dueDate"),
            put({"value": 3, "unit": "mo", "system": UCUM, "code": "mo"}, "target", 0, "dueDuration"),
        ),
        Expect("structure", "Goal.target[0].due.ofType(Duration)", "Goal.target.due[x]"),
    ),
    Variant(
        "organization without name",
        (P355, 2),
        US_CORE + "us-core-organization" + V6,
        drop("name"),
        Expect("required", "Organization.name", "Organization.name"),
    ),
    Variant(
        "organization NPI with 9 digits (us-core-16)",
        (P355, 2),
        US_CORE + "us-core-organization" + V6,
        _npi("123456789"),
        Expect("invariant", "Organization.identifier[1]", "us-core-16"),
    ),
    Variant(
        "organization NPI with a bad check digit (us-core-17)",
        (P355, 2),
        US_CORE + "us-core-organization" + V6,
        _npi("1234567890"),
        Expect("invariant", "Organization.identifier[1]", "us-core-17"),
    ),
    Variant(
        "organization with a home address (org-3)",
        (P355, 2),
        US_CORE + "us-core-organization" + V6,
        put("home", "address", 0, "use"),
        Expect("invariant", "Organization.address[0]", "org-2"),
    ),
    Variant(
        "practitioner without identifier",
        (P355, 3),
        US_CORE + "us-core-practitioner" + V6,
        drop("identifier"),
        Expect("required", "Practitioner.identifier", "Practitioner.identifier"),
    ),
    Variant(
        "practitioner without name",
        (P355, 3),
        US_CORE + "us-core-practitioner" + V3,
        drop("name"),
        Expect("required", "Practitioner.name", "Practitioner.name"),
    ),
    Variant(
        "location without name",
        (P355, 1),
        US_CORE + "us-core-location" + V6,
        drop("name"),
        Expect("required", "Location.name", "Location.name"),
    ),
    Variant(
        "device without type",
        (P355, 300),
        US_CORE + "us-core-implantable-device" + V6,
        drop("type"),
        Expect("required", "Device.type", "Device.type"),
    ),
    Variant(
        "device UDI without AIDC or HRF (us-core-12)",
        (P355, 300),
        US_CORE + "us-core-implantable-device" + V3,
        drop("udiCarrier", 0, "carrierHRF"),
        Expect("invariant", "Device", "us-core-12"),
    ),
    Variant(
        "coverage without member id (us-core-15)",
        (P85, 249),
        US_CORE + "us-core-coverage" + V6,
        steps(drop("identifier"), drop("subscriberId")),
        Expect("invariant", "Coverage", "us-core-15"),
    ),
    Variant(
        "coverage without relationship",
        (P85, 249),
        US_CORE + "us-core-coverage" + V6,
        drop("relationship"),
        Expect("required", "Coverage.relationship", "Coverage.relationship"),
    ),
    Variant(
        "practitioner role for a Patient",
        (P355, 4),
        US_CORE + "us-core-practitionerrole" + V6,
        put({"reference": "Patient/1"}, "practitioner"),
        Expect("structure", "PractitionerRole.practitioner.reference", "PractitionerRole.practitioner"),
    ),
]
