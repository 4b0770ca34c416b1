"""The searches Inferno's US Core test kit (6.1.0) runs, against the Inferno reference patients.

Like Inferno, each search takes its values from a resource of the patient (the "sample"): the
first coding of a CodeableConcept as ``system|code``, the family name, the date of the sample...
Dates are also searched with gt/lt/ge/le and full dateTimes in other time zones.  Each search's id
set is compared with the matchers of ``expected.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone
from typing import Any

import pytest

from tests.search import expected as x
from tests.search.loader import INVALID_OBSERVATION, Resource, World, assert_search, key

LOAD_SMALL = False  # the Inferno reference data only
PATIENTS = ("85", "355", "us-core-client-tests-patient")
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ASSERTED_DATE = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate"


@dataclass(frozen=True)
class P:
    """A search parameter as the matchers see it: its type and where its values are."""

    kind: str  # id, token, token-value, string, date, reference
    paths: tuple[str, ...] = ()
    target: str = "Patient"
    extract: Callable[[Resource], list[Any]] | None = None

    def values(self, res: Resource) -> list[Any]:
        return self.extract(res) if self.extract else x.values(res, *self.paths)


def _asserted(res: Resource) -> list[Any]:
    return [
        e["valueDateTime"]
        for e in res.get("extension", [])
        if e.get("url") == ASSERTED_DATE and "valueDateTime" in e
    ]


def _ref(*paths: str, target: str = "Patient") -> P:
    return P("reference", paths, target)


def _tok(*paths: str) -> P:
    return P("token", paths)


def _date(*paths: str) -> P:
    return P("date", paths)


def _str(*paths: str) -> P:
    return P("string", paths)


ID = P("id")
PARAMS: dict[str, dict[str, P]] = {
    "Patient": {
        "_id": ID,
        "identifier": _tok("identifier"),
        "identifier#value": P("token-value", ("identifier",)),
        "name": _str("name"),
        "birthdate": _date("birthDate"),
        "gender": _tok("gender"),
        "family": _str("name.family"),
        "death-date": _date("deceasedDateTime"),
    },
    "Observation": {
        "patient": _ref("subject"),
        "category": _tok("category"),
        "code": _tok("code"),
        "date": _date("effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        "status": _tok("status"),
    },
    "Condition": {
        "patient": _ref("subject"),
        "category": _tok("category"),
        "clinical-status": _tok("clinicalStatus"),
        "code": _tok("code"),
        "onset-date": _date("onsetDateTime", "onsetPeriod"),
        "asserted-date": P("date", extract=_asserted),
        "recorded-date": _date("recordedDate"),
        "abatement-date": _date("abatementDateTime", "abatementPeriod"),
        "encounter": _ref("encounter", target="Encounter"),
    },
    "Encounter": {
        "patient": _ref("subject"),
        "_id": ID,
        "identifier": _tok("identifier"),
        "identifier#value": P("token-value", ("identifier",)),
        "date": _date("period"),
        "type": _tok("type"),
        "status": _tok("status"),
        "class": _tok("class"),
        "location": _ref("location.location", target="Location"),
        "discharge-disposition": _tok("hospitalization.dischargeDisposition"),
    },
    "MedicationRequest": {
        "patient": _ref("subject"),
        "intent": _tok("intent"),
        "status": _tok("status"),
        "encounter": _ref("encounter", target="Encounter"),
        "authoredon": _date("authoredOn"),
    },
    "AllergyIntolerance": {"patient": _ref("patient"), "clinical-status": _tok("clinicalStatus")},
    "CarePlan": {
        "patient": _ref("subject"),
        "category": _tok("category"),
        "date": _date("period"),
        "status": _tok("status"),
    },
    "CareTeam": {"patient": _ref("subject"), "status": _tok("status"), "role": _tok("participant.role")},
    "DiagnosticReport": {
        "patient": _ref("subject"),
        "category": _tok("category"),
        "code": _tok("code"),
        "date": _date("effectiveDateTime", "effectivePeriod"),
        "status": _tok("status"),
    },
    "DocumentReference": {
        "_id": ID,
        "patient": _ref("subject"),
        "category": _tok("category"),
        "type": _tok("type"),
        "date": _date("date"),
        "period": _date("context.period"),
        "status": _tok("status"),
    },
    "Goal": {
        "patient": _ref("subject"),
        "lifecycle-status": _tok("lifecycleStatus"),
        "target-date": _date("target.dueDate"),
        "description": _tok("description"),
    },
    "Immunization": {
        "patient": _ref("patient"),
        "date": _date("occurrenceDateTime"),
        "status": _tok("status"),
    },
    "MedicationDispense": {"patient": _ref("subject"), "status": _tok("status"), "type": _tok("type")},
    "Procedure": {
        "patient": _ref("subject"),
        "date": _date("performedDateTime", "performedPeriod"),
        "code": _tok("code"),
        "status": _tok("status"),
    },
    "ServiceRequest": {
        "_id": ID,
        "patient": _ref("subject"),
        "category": _tok("category"),
        "code": _tok("code"),
        "authored": _date("authoredOn"),
        "status": _tok("status"),
    },
    "Coverage": {"patient": _ref("beneficiary"), "status": _tok("status"), "type": _tok("type")},
    "Device": {"patient": _ref("patient"), "type": _tok("type"), "status": _tok("status")},
    "Specimen": {"_id": ID, "patient": _ref("subject"), "type": _tok("type")},
    "QuestionnaireResponse": {
        "_id": ID,
        "patient": _ref("subject"),
        "authored": _date("authored"),
        "status": _tok("status"),
    },
    "RelatedPerson": {"_id": ID, "patient": _ref("patient"), "name": _str("name")},
    "Provenance": {"patient": _ref("target")},
    "Location": {
        "name": _str("name", "alias"),
        "address": _str("address"),
        "address-city": _str("address.city"),
        "address-state": _str("address.state"),
        "address-postalcode": _str("address.postalCode"),
    },
    "Organization": {"name": _str("name", "alias"), "address": _str("address")},
    "Practitioner": {"name": _str("name"), "identifier": _tok("identifier")},
    "PractitionerRole": {
        "specialty": _tok("specialty"),
        "practitioner": _ref("practitioner", target="Practitioner"),
    },
}

SEARCHES: list[tuple[str, tuple[str, ...]]] = [
    ("Patient", ("_id",)),
    ("Patient", ("identifier",)),
    ("Patient", ("identifier#value",)),
    ("Patient", ("name",)),
    ("Patient", ("birthdate", "name")),
    ("Patient", ("gender", "name")),
    ("Patient", ("family", "gender")),
    ("Patient", ("birthdate", "family")),
    ("Patient", ("death-date", "family")),
    ("Observation", ("patient", "category")),
    ("Observation", ("patient", "code")),
    ("Observation", ("patient", "category", "date")),
    ("Observation", ("patient", "code", "date")),
    ("Observation", ("patient", "category", "status")),
    ("Condition", ("patient",)),
    ("Condition", ("patient", "category")),
    ("Condition", ("patient", "clinical-status")),
    ("Condition", ("patient", "code")),
    ("Condition", ("patient", "onset-date")),
    ("Condition", ("patient", "asserted-date")),
    ("Condition", ("patient", "recorded-date")),
    ("Condition", ("patient", "abatement-date")),
    ("Condition", ("patient", "category", "encounter")),
    ("Encounter", ("patient",)),
    ("Encounter", ("_id",)),
    ("Encounter", ("identifier",)),
    ("Encounter", ("identifier#value",)),
    ("Encounter", ("patient", "date")),
    ("Encounter", ("patient", "type")),
    ("Encounter", ("patient", "status")),
    ("Encounter", ("class", "patient")),
    ("Encounter", ("patient", "location")),
    ("Encounter", ("patient", "discharge-disposition")),
    ("MedicationRequest", ("patient", "intent")),
    ("MedicationRequest", ("patient", "intent", "status")),
    ("MedicationRequest", ("patient", "intent", "encounter")),
    ("MedicationRequest", ("patient", "intent", "authoredon")),
    ("AllergyIntolerance", ("patient",)),
    ("AllergyIntolerance", ("patient", "clinical-status")),
    ("CarePlan", ("patient", "category")),
    ("CarePlan", ("patient", "category", "date")),
    ("CarePlan", ("patient", "category", "status")),
    ("CarePlan", ("patient", "category", "status", "date")),
    ("CareTeam", ("patient", "status")),
    ("CareTeam", ("patient", "role")),
    ("DiagnosticReport", ("patient",)),
    ("DiagnosticReport", ("patient", "category")),
    ("DiagnosticReport", ("patient", "code")),
    ("DiagnosticReport", ("patient", "category", "date")),
    ("DiagnosticReport", ("patient", "status")),
    ("DiagnosticReport", ("patient", "code", "date")),
    ("DocumentReference", ("_id",)),
    ("DocumentReference", ("patient",)),
    ("DocumentReference", ("patient", "category")),
    ("DocumentReference", ("patient", "type")),
    ("DocumentReference", ("patient", "category", "date")),
    ("DocumentReference", ("patient", "type", "period")),
    ("DocumentReference", ("patient", "status")),
    ("Goal", ("patient",)),
    ("Goal", ("patient", "lifecycle-status")),
    ("Goal", ("patient", "target-date")),
    ("Goal", ("patient", "description")),
    ("Immunization", ("patient",)),
    ("Immunization", ("patient", "date")),
    ("Immunization", ("patient", "status")),
    ("MedicationDispense", ("patient",)),
    ("MedicationDispense", ("patient", "status")),
    ("MedicationDispense", ("patient", "status", "type")),
    ("Procedure", ("patient",)),
    ("Procedure", ("patient", "date")),
    ("Procedure", ("patient", "code", "date")),
    ("Procedure", ("patient", "status")),
    ("ServiceRequest", ("_id",)),
    ("ServiceRequest", ("patient",)),
    ("ServiceRequest", ("patient", "category")),
    ("ServiceRequest", ("patient", "code")),
    ("ServiceRequest", ("patient", "category", "authored")),
    ("ServiceRequest", ("patient", "status")),
    ("ServiceRequest", ("patient", "code", "authored")),
    ("Coverage", ("patient",)),
    ("Coverage", ("patient", "type")),
    ("Device", ("patient",)),
    ("Device", ("patient", "type")),
    ("Device", ("patient", "status")),
    ("Specimen", ("_id",)),
    ("Specimen", ("patient",)),
    ("Specimen", ("patient", "type")),
    ("QuestionnaireResponse", ("_id",)),
    ("QuestionnaireResponse", ("patient",)),
    ("QuestionnaireResponse", ("patient", "authored")),
    ("QuestionnaireResponse", ("patient", "status")),
    ("RelatedPerson", ("_id",)),
    ("RelatedPerson", ("patient",)),
    ("RelatedPerson", ("name", "patient")),
    ("Provenance", ("patient",)),
    ("Location", ("name",)),
    ("Location", ("address",)),
    ("Location", ("address-city",)),
    ("Location", ("address-state",)),
    ("Location", ("address-postalcode",)),
    ("Organization", ("name",)),
    ("Organization", ("address",)),
    ("Practitioner", ("name",)),
    ("Practitioner", ("identifier",)),
    ("PractitionerRole", ("specialty",)),
    ("PractitionerRole", ("practitioner",)),
]

PATIENT_TYPES = sorted({t for t, _ in SEARCHES if "patient" in PARAMS[t]})


# -- choosing values from a sample resource ----------------------------------------------------


def token_value(el: Any, value_only: bool = False) -> str:
    if isinstance(el, str):
        return el
    if isinstance(el, bool):
        return "true" if el else "false"
    if "coding" in el:
        el = el["coding"][0]
    if "value" in el and "code" not in el:  # Identifier
        return el["value"] if value_only or not el.get("system") else f"{el['system']}|{el['value']}"
    return f"{el['system']}|{el['code']}" if el.get("system") else el["code"]


def string_value(el: Any) -> str:
    if isinstance(el, str):
        return el
    if "family" in el:
        return str(el["family"])
    if "city" in el:
        return str(el["city"])
    return x.string_parts(el)[0]


def _fmt(dt: Any, hours: int) -> str:
    return str(dt.astimezone(timezone(timedelta(hours=hours))).isoformat(timespec="seconds"))


def date_queries(el: Any) -> list[str]:
    """The date searches Inferno makes from one value: the day itself and gt/lt/ge/le around it."""
    rng = x.element_range(el)
    assert rng is not None
    lo, hi = rng
    out = []
    day = (el if isinstance(el, str) else el.get("start", ""))[:10]
    if day and x.date_compare("eq", x.date_range(day), rng):
        out.append(day)
    if lo != x.MIN_DT:
        out += [f"gt{_fmt(lo - timedelta(days=1), 5)}", f"ge{_fmt(lo.replace(microsecond=0), 0)}"]
    if hi != x.MAX_DT:
        out += [
            f"lt{_fmt(hi + timedelta(days=1), -5)}",
            f"le{_fmt((hi - timedelta(microseconds=1)).replace(microsecond=0), -4)}",
        ]
    if isinstance(el, str) and len(el) > 10 and "T" in el:
        out.append(el)  # the exact dateTime as written, with its offset
    return out


def queries_for(rtype: str, params: tuple[str, ...], sample: Resource) -> list[list[tuple[str, str]]]:
    """The searches built from ``sample`` (one per date variant), as lists of (name, value)."""
    fixed: list[tuple[str, str]] = []
    date_param: tuple[str, list[str]] | None = None
    for name in params:
        p = PARAMS[rtype][name]
        code = name.split("#")[0]
        vals = p.values(sample)
        if p.kind == "id":
            fixed.append((code, sample["id"]))
        elif p.kind in ("token", "token-value"):
            fixed.append((code, token_value(vals[0], value_only=p.kind == "token-value")))
        elif p.kind == "string":
            fixed.append((code, string_value(vals[0])))
        elif p.kind == "reference":
            ref = x.reference_strings(vals)[0]
            fixed.append((code, ref.split("/", 1)[1] if code == "patient" else ref))
        else:
            date_param = (code, date_queries(vals[0]))
    if date_param is None:
        return [fixed]
    return [[*fixed, (date_param[0], q)] for q in date_param[1]]


def predicate(rtype: str, query: list[tuple[str, str]], overlap: bool = False) -> Callable[[Resource], bool]:
    by_code = {name.split("#")[0]: p for name, p in PARAMS[rtype].items() if "#" not in name}

    def one(code: str, value: str) -> Callable[[Resource], bool]:
        p = by_code[code]
        if p.kind == "id":
            return lambda r: r["id"] == value
        if p.kind == "token":
            return lambda r: x.token_match(p.values(r), value)
        if p.kind == "string":
            return lambda r: x.string_match(x.strings(r, *p.paths), value)
        if p.kind == "reference":
            target = value if "/" in value else f"{p.target}/{value}"
            return lambda r: target in x.reference_strings(p.values(r))
        q = value if value[:2].isalpha() else "eq" + value
        return lambda r: x.date_match(p.values(r), q, overlap)

    preds = [one(code, value) for code, value in query]
    return lambda r: all(p(r) for p in preds)


def samples(world: World, rtype: str, params: tuple[str, ...]) -> list[Resource]:
    """Per patient (or for types without a patient, the first two), a resource with all the values."""
    specs = [PARAMS[rtype][n] for n in params]
    complete = [
        r
        for r in world.all(rtype)
        if all(s.kind == "id" or s.values(r) for s in specs)
        and (rtype != "Patient" or r["id"] in (*PATIENTS, "907", "908"))
    ]
    if "patient" not in PARAMS[rtype]:
        return sorted(complete, key=lambda r: r["id"])[:2]
    out = []
    pat = PARAMS[rtype]["patient"]
    for pid in PATIENTS:
        mine = [r for r in complete if f"Patient/{pid}" in x.reference_strings(pat.values(r))]
        if mine:
            out.append(mine[0])
    return out


def _url(rtype: str, query: list[tuple[str, str]]) -> str:
    return rtype + "?" + "&".join(f"{k}={v}" for k, v in query)


@pytest.mark.parametrize("rtype,params", SEARCHES, ids=[f"{t}?{'+'.join(p)}" for t, p in SEARCHES])
def test_us_core_search(world: World, rtype: str, params: tuple[str, ...]) -> None:
    picked = samples(world, rtype, params)
    if not picked:
        pytest.skip(f"the Inferno data has no {rtype} with {', '.join(params)}")
    for sample in picked:
        for query in queries_for(rtype, params, sample):
            url = _url(rtype, query)
            if any(v.startswith(("ge", "le")) for _, v in query):
                # R4's ge/le and the looser overlap reading (see test_search_types) may differ here:
                # the result must lie between the two.
                strict = world.ids_where(rtype, predicate(rtype, query))
                loose = world.ids_where(rtype, predicate(rtype, query, overlap=True))
                got = world.ids(url)
                assert strict <= got <= loose, f"{url}: missing {strict - got}, unexpected {got - loose}"
                assert sample["id"] in strict
                continue
            want = assert_search(world, url, predicate(rtype, query), nonempty=False)
            if not any(v.startswith(("gt", "lt")) for _, v in query):
                assert sample["id"] in want, f"{url}: the sample {key(sample)} must match its own values"


def test_us_core_search_status_union(world: World) -> None:
    """Observation?patient+category+status with comma-joined statuses is the union."""
    statuses = ("final", "amended", "preliminary", "cancelled")
    for i, status in enumerate(("amended", "preliminary")):  # the data has only final ones
        world.put(
            {
                "resourceType": "Observation",
                "id": f"status-{status}",
                "status": status,
                "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": f"Patient/{PATIENTS[i]}"},
                "effectiveDateTime": "2020-01-01T00:00:00Z",
            }
        )
    for pid in PATIENTS:
        base = f"Observation?patient={pid}&category=vital-signs"
        union: set[str] = set()
        for status in statuses:
            union |= world.ids(f"{base}&status={status}")

        def pred(r: Resource, pid: str = pid) -> bool:
            return (
                x.refers_to(r, ["subject"], f"Patient/{pid}")
                and x.token_match(x.values(r, "category"), "vital-signs")
                and r["status"] in statuses
            )

        got = assert_search(world, f"{base}&status={','.join(statuses)}", pred)
        assert got == union
    assert world.ids("Observation?patient=85&status=amended,preliminary") == {"status-amended"}


def test_us_core_asserted_date_has_data(world: World) -> None:
    """The 6.1.0 asserted-date extension parameter finds the Conditions that carry the extension."""
    carriers = world.ids_where("Condition", lambda r: bool(_asserted(r)))
    assert carriers
    got: set[str] = set()
    for c in carriers:
        res = world.get("Condition", c)
        pid = x.reference_strings(x.values(res, "subject"))[0].split("/")[1]
        got |= world.ids(f"Condition?patient={pid}&asserted-date={_asserted(res)[0]}")
    assert carriers <= got


@pytest.mark.parametrize("rtype", PATIENT_TYPES)
def test_patient_id_and_reference_forms_agree(world: World, rtype: str) -> None:
    pat = PARAMS[rtype]["patient"]
    for pid in PATIENTS:
        bare = world.ids(f"{rtype}?patient={pid}")
        assert bare == world.ids(f"{rtype}?patient=Patient/{pid}"), (rtype, pid)
        assert bare == world.ids_where(
            rtype, lambda r, pid=pid: f"Patient/{pid}" in x.reference_strings(pat.values(r))
        )


@pytest.mark.parametrize("rtype", [t for t in PATIENT_TYPES if t != "Provenance"])
def test_revinclude_provenance(world: World, rtype: str) -> None:
    """``_revinclude=Provenance:target`` adds every Provenance that targets a match, as include entries."""
    provenances = world.all("Provenance")
    for pid in PATIENTS:
        res = world.search(f"{rtype}?patient={pid}&_revinclude=Provenance:target")
        matched = res.keys
        assert res.ids == world.ids(f"{rtype}?patient={pid}")
        want = {key(p) for p in provenances if matched & set(x.reference_strings(x.values(p, "target")))}
        assert res.include_keys == want, (rtype, pid)
        for page in res.pages:
            included = [key(e["resource"]) for e in page.get("entry", []) if e["search"]["mode"] == "include"]
            assert len(included) == len(set(included)), "an included resource appears twice on a page"


def test_revinclude_provenance_is_not_vacuous(world: World) -> None:
    res = world.search("Encounter?patient=85&_revinclude=Provenance:target")
    assert any(k.startswith("Provenance/") for k in res.include_keys)
    res = world.search("Patient?_id=85,355&_revinclude=Provenance:target")
    assert len(res.include_keys) == 2


def test_medication_request_include_medication(world: World) -> None:
    """``_include=MedicationRequest:medication``: the referenced Medications, search.mode include."""
    for pid in PATIENTS:
        for intent in ("order", "plan", "proposal", "original-order"):
            res = world.search(
                f"MedicationRequest?patient={pid}&intent={intent}&_include=MedicationRequest:medication"
            )
            assert res.ids == world.ids_where(
                "MedicationRequest",
                lambda r, pid=pid, intent=intent: (
                    x.refers_to(r, ["subject"], f"Patient/{pid}") and r["intent"] == intent
                ),
            )
            want = {
                ref
                for m in res.matches
                for ref in x.reference_strings(x.values(m, "medicationReference"))
                if ref.split("/")[1] in {r["id"] for r in world.all("Medication")}
            }
            assert res.include_keys == want
            for page in res.pages:
                for e in page.get("entry", []):
                    if e["resource"]["resourceType"] == "Medication":
                        assert e["search"]["mode"] == "include"
    res = world.search("MedicationRequest?patient=85&intent=order&_include=MedicationRequest:medication")
    assert any(k.startswith("Medication/") for k in res.include_keys), (
        "the data has a medicationReference for 85"
    )


def test_all_dates_are_utc_comparable() -> None:
    """The matchers' own sanity: a time zone offset moves the instant, not the day written."""
    assert x.date_range("2016-01-01T00:00:00+05:00")[0] == x.date_range("2015-12-31T19:00:00Z")[0]
    assert x.date_range("2016")[0].tzinfo == UTC


def test_invalid_inferno_observation_was_refused(world: World) -> None:
    """The Observation with ``effectivePeriod.stop`` (not R4) was refused with 400 and is not found;
    Patient 908 was refused (422) while it claimed us-core-patient without a gender."""
    assert [(r["id"], status) for r, status in world.rejected] == [(INVALID_OBSERVATION, 400), ("908", 422)]
    assert world.client.get(f"/fhir/Observation/{INVALID_OBSERVATION}").status_code == 404
    assert world.ids(f"Observation?_id={INVALID_OBSERVATION}") == set()
