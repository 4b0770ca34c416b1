"""US Core profile validation over HTTP: $validate, enforcement on writes, the profile settings
(unknown_profiles, require_profiles) and what the CapabilityStatement says about them.

Data: the Inferno reference patients (../shared/data/synthea/inferno-reference), whose resources
claim US Core 3.1.1 / 6.1.0 profiles in meta.profile; an unversioned US Core claim means the newest
loaded version, 6.1.0.  Tests that need them skip when the folder is absent.
"""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest

from tests.http.conftest import JSON_CT, SHARED, assert_outcome

INFERNO = SHARED / "data" / "synthea" / "inferno-reference"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
R4_SD = "http://hl7.org/fhir/StructureDefinition/"
JSON_PATCH = "application/json-patch+json"

P355 = "uscore_bundle_patient_355.json"
P85 = "uscore_bundle_patient_85.json"
P907 = "uscore_bundle_patient_907.json"
P908 = "uscore_bundle_patient_908.json"
CLIENT_TEST = "uscore_bundle_patient_client_test.json"
ASSERTED_DATE = "uscore_bundle_asserted-date.json"
# The one structurally invalid resource of the reference data: its Period has a "stop".
BROKEN_ENTRY = (P355, 266)


# -- data ------------------------------------------------------------------------------------


@cache
def _document(name: str) -> dict[str, Any]:
    return json.loads((INFERNO / name).read_bytes())


def inferno(name: str, index: int | None = None) -> dict[str, Any]:
    """A fresh copy of an Inferno reference bundle, or of one of its entries' resource."""
    if not (INFERNO / name).is_file():
        pytest.skip(f"Inferno reference patients not present at {INFERNO} (optional ../shared folder)")
    doc = _document(name)
    return copy.deepcopy(doc if index is None else doc["entry"][index]["resource"])


def patient_355() -> dict[str, Any]:
    """A valid US Core Patient (claims the unversioned us-core-patient, i.e. 6.1.0)."""
    return inferno(P355, 0)


def unprofiled_patient(**changes: Any) -> dict[str, Any]:
    """Patient 355 without meta (so no profile is claimed), its id dropped, ``changes`` applied
    (a value of None removes the element)."""
    p = patient_355()
    for k in ("meta", "id"):
        p.pop(k)
    for k, v in changes.items():
        if v is None:
            p.pop(k, None)
        else:
            p[k] = v
    return p


# -- helpers ---------------------------------------------------------------------------------


def validate(client, resource: dict[str, Any] | None, path: str | None = None, *,  # noqa: ANN001
             params: dict[str, Any] | list[tuple[str, str]] | None = None, parameters: bool = False,
             extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """POST ``resource`` to ``path`` (default [type]/$validate), as itself or wrapped in a
    Parameters resource; asserts 200 and an OperationOutcome, returns its issues."""
    if path is None:
        assert resource is not None
        path = f"/fhir/{resource['resourceType']}/$validate"
    if parameters:
        body: dict[str, Any] | None = {"resourceType": "Parameters", "parameter": [
            *([{"name": "resource", "resource": resource}] if resource is not None else []), *(extra or [])]}
    else:
        body = resource
    content = b"" if body is None else json.dumps(body).encode()
    r = client.post(path, params=params, content=content, headers={"Content-Type": JSON_CT})
    return assert_outcome(r, 200)


def errors(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in issues if i["severity"] in ("error", "fatal")]


def assert_clean(issues: list[dict[str, Any]]) -> None:
    """No error issue (warnings and information about must-support elements may remain)."""
    assert errors(issues) == [], issues


def assert_all_ok(issues: list[dict[str, Any]]) -> None:
    assert issues == [{"severity": "information", "code": "informational", "diagnostics": "All OK"}], issues


def error_at(issues: list[dict[str, Any]], expression: str, code: str | None = None,
             profile: str | None = None) -> dict[str, Any]:
    """The error issue at ``expression``: checks its code and that the profile (canonical|version)
    that states the rule is named in diagnostics and, for $validate answers, details.text."""
    found = [i for i in errors(issues) if expression in i.get("expression", [])]
    assert found, (expression, issues)
    issue = found[0]
    if code is not None:
        assert issue["code"] == code, issue
    if profile is not None:
        assert profile in issue["diagnostics"], issue
        if "details" in issue:  # $validate answers carry it; write refusals only diagnostics
            assert issue["details"]["text"].startswith(profile), issue
    return issue


def count(client, rtype: str) -> int:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}", params={"_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def post(client, resource: dict[str, Any]):  # noqa: ANN001, ANN201
    return client.post(f"/fhir/{resource['resourceType']}", json=resource)


def transaction(*entries: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle of (method, url, resource) entries."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": res, "request": {"method": method, "url": url}}
        for method, url, res in entries]}


# -- 1. $validate of the valid Inferno patients ----------------------------------------------

VALID_PATIENTS = [P355, P85, P907, CLIENT_TEST]


@pytest.mark.parametrize("body", ["resource", "parameters"])
@pytest.mark.parametrize("name", VALID_PATIENTS)
def test_validate_valid_inferno_patients(client, name: str, body: str) -> None:
    patient = inferno(name, 0)
    assert patient["resourceType"] == "Patient" and patient["meta"]["profile"] == [f"{US_CORE}us-core-patient"]
    issues = validate(client, patient, parameters=body == "parameters")
    assert_clean(issues)
    # What is reported comes from the claimed profile, resolved to its newest version.
    for i in issues:
        if "details" in i and i["details"]["text"].startswith(f"{US_CORE}us-core-patient|"):
            assert i["details"]["text"].startswith(f"{US_CORE}us-core-patient|6.1.0"), i


@pytest.mark.parametrize("name", [P355, P85])
def test_validate_valid_inferno_patients_against_us_core_311(client, name: str) -> None:
    # Inferno's 3.1.1 preset uses patients 85 and 355.
    issues = validate(client, inferno(name, 0), params={"profile": f"{US_CORE}us-core-patient|3.1.1"})
    assert_clean(issues)


def test_validate_instance_level_of_valid_patient(client) -> None:  # noqa: ANN001
    p = patient_355()
    assert client.put("/fhir/Patient/355", json=p).status_code == 201
    assert_clean(validate(client, p, "/fhir/Patient/355/$validate", params={"mode": "update"}))


def test_validate_known_invalid_inferno_patient_908(client) -> None:  # noqa: ANN001
    # A US Core 8.0.0 example claiming the unversioned us-core-patient (6.1.0 here): us-core-sex
    # takes a valueCode in 6.1.0, not a valueCoding.
    issues = validate(client, inferno(P908, 0))
    sex = f"{US_CORE}us-core-sex|6.1.0"
    error_at(issues, "Patient.extension[0].value.ofType(Coding)", "structure", sex)
    error_at(issues, "Patient.extension[0].value", "required", sex)


# -- 2. $validate of broken variants ---------------------------------------------------------


def _del(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(r: dict[str, Any]) -> None:
        for k in keys:
            del r[k]
    return change


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(r: dict[str, Any]) -> None:
        r[key] = value
    return change


def _race_omb(r: dict[str, Any]) -> None:
    race = r["extension"][0]
    assert race["url"] == f"{US_CORE}us-core-race" and race["extension"][0]["url"] == "ombCategory"
    race["extension"][0]["valueCoding"]["code"] = "9999-9"


def _identifier_without_system(r: dict[str, Any]) -> None:
    del r["identifier"][0]["system"]


def _vital_sign_category(r: dict[str, Any]) -> None:
    assert r["category"][0]["coding"][0]["code"] == "vital-signs"
    r["category"][0]["coding"][0]["code"] = "laboratory"


def _heart_rate_code(r: dict[str, Any]) -> None:
    assert r["code"]["coding"][0]["code"] == "8867-4"
    r["code"]["coding"][0]["code"] = "8310-5"  # body temperature


def _weight_in_centimetres(r: dict[str, Any]) -> None:
    r["valueQuantity"].update(unit="cm", code="cm")  # a length


PATIENT = (P355, 0)
HEART_RATE = (P355, 312)  # us-core-heart-rate
BODY_WEIGHT = (P355, 229)  # R4 bodyweight + vitalsigns
BLOOD_PRESSURE = (P355, 265)  # R4 bp + vitalsigns
LAB = (P355, 181)  # us-core-observation-lab
CONDITION_PHC = (P355, 461)  # us-core-condition-problems-health-concerns (6.1.0 only)
CONDITION_311 = (P355, 17)  # us-core-condition (3.1.1 only)
ENCOUNTER = (P355, 5)  # us-core-encounter
ORGANIZATION = (P355, 2)  # us-core-organization

PAT6 = f"{US_CORE}us-core-patient|6.1.0"

# (id, entry, change, expected error: (code, expression, profile that states the rule or None for R4 structure))
BROKEN = [
    ("patient-without-identifier", PATIENT, _del("identifier"), ("required", "Patient.identifier", PAT6)),
    ("patient-without-name", PATIENT, _del("name"), ("required", "Patient.name", PAT6)),
    ("patient-without-gender", PATIENT, _del("gender"), ("required", "Patient.gender", PAT6)),
    ("patient-name-without-family-or-given", PATIENT, _set("name", [{"use": "official"}]),
     ("invariant", "Patient.name[0]", PAT6)),
    ("patient-identifier-without-system", PATIENT, _identifier_without_system,
     ("required", "Patient.identifier[0].system", PAT6)),
    ("patient-race-bad-omb-category", PATIENT, _race_omb,
     ("code-invalid", "Patient.extension[0].extension[0].value.ofType(Coding)", f"{US_CORE}us-core-race|6.1.0")),
    ("patient-gender-foo", PATIENT, _set("gender", "foo"), ("code-invalid", "Patient.gender", None)),
    ("patient-bad-birthdate", PATIENT, _set("birthDate", "1940-13-45"), ("value", "Patient.birthDate", None)),
    ("patient-unknown-element", PATIENT, _set("foo", 1), ("structure", "Patient.foo", None)),
    ("vital-sign-without-category", HEART_RATE, _del("category"),
     ("required", "Observation.category", f"{US_CORE}us-core-heart-rate|6.1.0")),
    ("vital-sign-without-vital-signs-category", HEART_RATE, _vital_sign_category,
     ("required", "Observation.category", f"{US_CORE}us-core-heart-rate|6.1.0")),
    ("heart-rate-wrong-loinc", HEART_RATE, _heart_rate_code,
     ("value", "Observation.code", f"{US_CORE}us-core-heart-rate|6.1.0")),
    ("bodyweight-in-centimetres", BODY_WEIGHT, _weight_in_centimetres,
     ("code-invalid", "Observation.value.ofType(Quantity).code", f"{R4_SD}bodyweight|4.0.1")),
    ("blood-pressure-without-components", BLOOD_PRESSURE, _del("component"),
     ("required", "Observation.component", f"{R4_SD}bp|4.0.1")),
    ("lab-without-category", LAB, _del("category"),
     ("required", "Observation.category", f"{US_CORE}us-core-observation-lab|6.1.0")),
    ("lab-subject-is-organization", LAB, _set("subject", {"reference": "Organization/1"}),
     ("structure", "Observation.subject.reference", f"{US_CORE}us-core-observation-lab|6.1.0")),
    ("condition-610-without-category", CONDITION_PHC, _del("category"),
     ("required", "Condition.category", f"{US_CORE}us-core-condition-problems-health-concerns|6.1.0")),
    ("condition-311-without-category", CONDITION_311, _del("category"),
     ("required", "Condition.category", f"{US_CORE}us-core-condition|3.1.1")),
    ("encounter-without-status", ENCOUNTER, _del("status"), ("required", "Encounter.status", None)),
    ("encounter-without-class", ENCOUNTER, _del("class"), ("required", "Encounter.class", None)),
    ("encounter-without-type", ENCOUNTER, _del("type"),
     ("required", "Encounter.type", f"{US_CORE}us-core-encounter|6.1.0")),
    ("organization-without-name", ORGANIZATION, _del("name"),
     ("required", "Organization.name", f"{US_CORE}us-core-organization|6.1.0")),
]


@pytest.mark.parametrize("entry,change,expected", [pytest.param(*c[1:], id=c[0]) for c in BROKEN])
def test_validate_reports_broken_variants(client, entry: tuple[str, int], change: Callable[[dict[str, Any]], None],  # noqa: ANN001
                                          expected: tuple[str, str, str | None]) -> None:
    resource = inferno(*entry)
    assert_clean(validate(client, resource))  # the unbroken resource is valid
    change(resource)
    code, expression, profile = expected
    for parameters in (False, True):
        issues = validate(client, resource, parameters=parameters)
        issue = error_at(issues, expression, code, profile)
        if profile is None:  # R4 structure: checked before (and without) any profile
            assert "details" not in issue, issue
        else:
            assert issue["details"]["text"].startswith(profile), issue
        # Errors come before warnings and information.
        severities = [i["severity"] for i in issues]
        assert severities == sorted(severities, key=["fatal", "error", "warning", "information"].index)


def test_validate_names_the_us_core_6_invariant(client) -> None:  # noqa: ANN001
    p = patient_355()
    p["name"] = [{"use": "official"}]
    issue = error_at(validate(client, p), "Patient.name[0]", "invariant", PAT6)
    assert "us-core-6" in issue["diagnostics"], issue


def test_validate_of_a_resource_of_another_type(client) -> None:  # noqa: ANN001
    issues = validate(client, patient_355(), "/fhir/Observation/$validate")
    error_at(issues, "resourceType", "invalid")


# -- 3. $validate: mode, instance level, profile parameter -----------------------------------


@pytest.mark.parametrize("how", ["query", "parameters"])
def test_mode_update_without_id_is_an_error(client, how: str) -> None:  # noqa: ANN001
    p = unprofiled_patient()
    if how == "query":
        issues = validate(client, p, params={"mode": "update"})
    else:
        issues = validate(client, p, parameters=True, extra=[{"name": "mode", "valueCode": "update"}])
    error_at(issues, "Patient.id", "required")
    # ... and with the id it is fine.
    p["id"] = "abc"
    assert_all_ok(validate(client, p, params={"mode": "update"}))


def test_instance_validate_with_mismatching_id_is_an_error(client) -> None:  # noqa: ANN001
    p = unprofiled_patient(id="355")
    issues = validate(client, p, "/fhir/Patient/other/$validate", params={"mode": "update"})
    issue = error_at(issues, "Patient.id", "invalid")
    assert "Patient/other" in issue["diagnostics"]
    assert_all_ok(validate(client, p, "/fhir/Patient/355/$validate", params={"mode": "update"}))


def test_mode_delete(client) -> None:  # noqa: ANN001
    assert client.put("/fhir/Patient/355", json=patient_355()).status_code == 201
    assert_all_ok(validate(client, None, "/fhir/Patient/355/$validate", params={"mode": "delete"}))
    issues = validate(client, None, "/fhir/Patient/missing/$validate", params={"mode": "delete"})
    assert [i["code"] for i in errors(issues)] == ["not-found"], issues
    assert "Patient/missing" in issues[0]["diagnostics"]
    # A deleted resource is missing too.
    assert client.delete("/fhir/Patient/355").status_code in (200, 204)
    issues = validate(client, None, "/fhir/Patient/355/$validate", params={"mode": "delete"})
    assert [i["code"] for i in errors(issues)] == ["not-found"], issues


def test_mode_delete_in_parameters(client) -> None:  # noqa: ANN001
    assert client.put("/fhir/Patient/355", json=patient_355()).status_code == 201
    mode = [{"name": "mode", "valueCode": "delete"}]
    assert_all_ok(validate(client, None, "/fhir/Patient/355/$validate", parameters=True, extra=mode))
    issues = validate(client, None, "/fhir/Patient/nope/$validate", parameters=True, extra=mode)
    assert [i["code"] for i in errors(issues)] == ["not-found"], issues


def test_unknown_mode_is_400(client) -> None:  # noqa: ANN001
    r = client.post("/fhir/Patient/$validate", params={"mode": "upsert"}, json=patient_355())
    assert_outcome(r, 400, code="invalid", severity="error")


def test_instance_validate_without_body_validates_the_stored_resource(client) -> None:  # noqa: ANN001
    # Stored without a profile claim and without identifier: fine until US Core is asked for.
    r = post(client, unprofiled_patient(identifier=None))
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    path = f"/fhir/Patient/{pid}/$validate"
    assert_all_ok(validate(client, None, path))
    issues = validate(client, None, path, params={"profile": PAT6})
    error_at(issues, "Patient.identifier", "required", PAT6)
    # GET works as well (no side effects).
    r = client.get(path, params={"profile": PAT6})
    error_at(assert_outcome(r, 200), "Patient.identifier", "required", PAT6)
    # A stored resource that claims us-core-patient is validated against it.
    assert client.put("/fhir/Patient/355", json=patient_355()).status_code == 201
    assert_clean(validate(client, None, "/fhir/Patient/355/$validate"))
    # Nothing stored there: 404.
    assert_outcome(client.post("/fhir/Patient/nope/$validate"), 404, code="not-found")


def test_type_validate_without_body_is_400(client) -> None:  # noqa: ANN001
    assert_outcome(client.post("/fhir/Patient/$validate"), 400, severity="error")


@pytest.mark.parametrize("version", ["6.1.0", "3.1.1"])
@pytest.mark.parametrize("how", ["query", "parameters-uri", "parameters-canonical"])
def test_profile_parameter_validates_an_unclaimed_profile(client, how: str, version: str) -> None:  # noqa: ANN001
    profile = f"{US_CORE}us-core-patient|{version}"
    p = unprofiled_patient(identifier=None)
    assert_all_ok(validate(client, p))  # claims nothing: only R4 structure
    if how == "query":
        issues = validate(client, p, params={"profile": profile})
    else:
        kind = "valueUri" if how == "parameters-uri" else "valueCanonical"
        issues = validate(client, p, parameters=True, extra=[{"name": "profile", kind: profile}])
    error_at(issues, "Patient.identifier", "required", profile)


def test_profile_parameter_unversioned_means_newest(client) -> None:  # noqa: ANN001
    issues = validate(client, unprofiled_patient(identifier=None), params={"profile": f"{US_CORE}us-core-patient"})
    error_at(issues, "Patient.identifier", "required", PAT6)


def test_profile_parameter_of_another_type_is_an_error(client) -> None:  # noqa: ANN001
    issues = validate(client, unprofiled_patient(), params={"profile": f"{US_CORE}us-core-observation-lab|6.1.0"})
    assert errors(issues), issues
    assert any(f"{US_CORE}us-core-observation-lab|6.1.0" in i["diagnostics"] for i in errors(issues)), issues


@pytest.mark.parametrize("how", ["query", "parameters"])
def test_unknown_profile_parameter_is_an_error_issue(client, how: str) -> None:  # noqa: ANN001
    nope = "http://example.org/StructureDefinition/nope"
    p = unprofiled_patient()
    if how == "query":
        issues = validate(client, p, params={"profile": nope})
    else:
        issues = validate(client, p, parameters=True, extra=[{"name": "profile", "valueUri": nope}])
    errs = errors(issues)
    assert [i["code"] for i in errs] == ["not-supported"], issues
    assert nope in errs[0]["diagnostics"]


def test_unknown_claimed_profile_is_not_an_error_by_default(client) -> None:  # noqa: ANN001
    p = patient_355()
    p["meta"]["profile"] = ["http://example.org/StructureDefinition/nope"]
    assert_clean(validate(client, p))


# -- 4. enforcement on writes ----------------------------------------------------------------


def _invalid_claiming_patient() -> dict[str, Any]:
    p = patient_355()
    del p["identifier"]
    return p


def _assert_identifier_422(r) -> list[dict[str, Any]]:  # noqa: ANN001
    issues = assert_outcome(r, 422)
    assert issues[0]["severity"] == "error", issues
    assert issues[0]["expression"] == ["Patient.identifier"], issues
    assert issues[0]["code"] == "required"
    assert PAT6 in issues[0]["diagnostics"], issues
    assert all(i["severity"] != "information" for i in issues), issues
    return issues


def test_post_violating_claimed_profile_is_422(client) -> None:  # noqa: ANN001
    before = count(client, "Patient")
    _assert_identifier_422(post(client, _invalid_claiming_patient()))
    assert count(client, "Patient") == before


def test_put_violating_claimed_profile_is_422(client) -> None:  # noqa: ANN001
    _assert_identifier_422(client.put("/fhir/Patient/355", json=_invalid_claiming_patient()))
    assert client.get("/fhir/Patient/355").status_code == 404
    assert count(client, "Patient") == 0
    # An update of an existing resource is refused as well, and leaves it as it was.
    r = client.put("/fhir/Patient/355", json=patient_355())
    assert r.status_code == 201, r.text
    _assert_identifier_422(client.put("/fhir/Patient/355", json=_invalid_claiming_patient()))
    assert client.get("/fhir/Patient/355").json() == r.json()


def test_same_resource_without_profile_claim_is_not_enforced(client) -> None:  # noqa: ANN001
    p = _invalid_claiming_patient()
    del p["meta"]
    r = post(client, p)
    assert r.status_code == 201, r.text
    assert count(client, "Patient") == 1


def test_valid_claiming_resource_is_created(client) -> None:  # noqa: ANN001
    r = client.put("/fhir/Patient/355", json=patient_355())
    assert r.status_code == 201, r.text
    assert r.json()["meta"]["profile"] == [f"{US_CORE}us-core-patient"]


def test_structural_error_is_400_before_profiles(client) -> None:  # noqa: ANN001
    p = _invalid_claiming_patient()  # also violates us-core-patient
    p["gender"] = "foo"
    issues = assert_outcome(post(client, p), 400)
    assert "Patient.gender" in [e for i in errors(issues) for e in i.get("expression", [])], issues
    assert count(client, "Patient") == 0


def test_patch_removing_required_element_is_422(client) -> None:  # noqa: ANN001
    stored = client.put("/fhir/Patient/355", json=patient_355())
    assert stored.status_code == 201, stored.text
    r = client.patch("/fhir/Patient/355", content=json.dumps([{"op": "remove", "path": "/identifier"}]),
                     headers={"Content-Type": JSON_PATCH})
    _assert_identifier_422(r)
    after = client.get("/fhir/Patient/355").json()
    assert after == stored.json()
    assert after["meta"]["versionId"] == "1" and len(after["identifier"]) == 4


def test_patch_of_unclaimed_resource_is_not_enforced(client) -> None:  # noqa: ANN001
    r = post(client, unprofiled_patient())
    assert r.status_code == 201
    pid = r.json()["id"]
    r = client.patch(f"/fhir/Patient/{pid}", content=json.dumps([{"op": "remove", "path": "/identifier"}]),
                     headers={"Content-Type": JSON_PATCH})
    assert r.status_code == 200, r.text
    assert "identifier" not in r.json()


@pytest.mark.parametrize("name", [ASSERTED_DATE, P85, P907, CLIENT_TEST])
def test_inferno_bundles_load_as_transactions(client, name: str) -> None:  # noqa: ANN001
    bundle = inferno(name)
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text[:2000]
    body = r.json()
    assert body["type"] == "transaction-response"
    assert len(body["entry"]) == len(bundle["entry"])
    assert all(e["response"]["status"][:3] in ("200", "201") for e in body["entry"]), body["entry"]


def test_inferno_bundle_355_is_400_for_its_structural_error(client) -> None:  # noqa: ANN001
    bundle = inferno(P355)
    r = client.post("/fhir", json=bundle)
    issues = assert_outcome(r, 400, code="structure")
    name, index = BROKEN_ENTRY
    assert f"Bundle.entry[{index}]" in issues[0]["diagnostics"], issues
    assert "Observation.effective.ofType(Period).stop" in issues[0]["expression"], issues
    assert count(client, "Patient") == 0 and count(client, "Observation") == 0
    # Without the broken entry the rest is valid against its profiles.
    del bundle["entry"][index]
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text[:2000]
    assert count(client, "Patient") == 1


def test_inferno_bundle_908_violates_its_claimed_us_core_patient(client) -> None:  # noqa: ANN001
    # Not in the brief's "known invalid" list: patient 908 is derived from a US Core 8.0.0 example
    # and claims the unversioned us-core-patient (6.1.0 here); see tests/validation/test_inferno.py.
    r = client.post("/fhir", json=inferno(P908))
    issues = assert_outcome(r, 422)
    sex = f"{US_CORE}us-core-sex|6.1.0"
    assert issues[0]["severity"] == "error"
    assert all("Bundle.entry[0]" in i["diagnostics"] for i in errors(issues)), issues
    issue = error_at(issues, "Patient.extension[0].value.ofType(Coding)", "structure")
    assert sex in issue["diagnostics"]
    assert count(client, "Patient") == 0 and count(client, "Encounter") == 0


def test_transaction_entry_violating_claimed_profile_fails_the_transaction(client) -> None:  # noqa: ANN001
    bundle = transaction(("PUT", "Patient/355", patient_355()),
                         ("POST", "Observation", inferno(*LAB)),
                         ("POST", "Patient", _invalid_claiming_patient()))
    issues = assert_outcome(client.post("/fhir", json=bundle), 422)
    assert issues[0]["severity"] == "error" and issues[0]["code"] == "required", issues
    assert "Bundle.entry[2]" in issues[0]["diagnostics"], issues
    assert PAT6 in issues[0]["diagnostics"]
    assert issues[0]["expression"] == ["Patient.identifier"], issues
    assert count(client, "Patient") == 0 and count(client, "Observation") == 0


def test_batch_entry_violating_claimed_profile_fails_alone(client) -> None:  # noqa: ANN001
    bundle = transaction(("PUT", "Patient/355", patient_355()), ("POST", "Patient", _invalid_claiming_patient()))
    bundle["type"] = "batch"
    r = client.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    ok, bad = r.json()["entry"]
    assert ok["response"]["status"].startswith("201"), ok
    assert bad["response"]["status"].startswith("422"), bad
    issue = bad["response"]["outcome"]["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.identifier"], issue
    assert count(client, "Patient") == 1


# -- 5. unknown profiles ---------------------------------------------------------------------

NOPE = "http://example.org/StructureDefinition/nope"


def _claiming_unknown(url: str = NOPE) -> dict[str, Any]:
    p = patient_355()
    p["meta"]["profile"] = [url]
    return p


def test_unknown_profile_refused(make_client) -> None:  # noqa: ANN001
    c = make_client(unknown_profiles="refuse")
    for r in (post(c, _claiming_unknown()), c.put("/fhir/Patient/355", json=_claiming_unknown())):
        issues = assert_outcome(r, 422)
        assert [(i["severity"], i["code"]) for i in issues] == [("error", "not-supported")], issues
        assert issues[0]["expression"] == ["Patient.meta.profile"]
        assert NOPE in issues[0]["diagnostics"]
    # Refused next to a known profile too.
    p = patient_355()
    p["meta"]["profile"].append(NOPE)
    assert_outcome(post(c, p), 422, code="not-supported")
    assert count(c, "Patient") == 0
    # Known profiles only: accepted.
    assert post(c, patient_355()).status_code == 201


def test_unknown_profile_refused_is_an_issue_of_validate(make_client) -> None:  # noqa: ANN001
    c = make_client(unknown_profiles="refuse")
    issues = validate(c, _claiming_unknown())
    err = error_at(issues, "Patient.meta.profile", "not-supported")
    assert NOPE in err["diagnostics"]


def test_unknown_profile_ignored_by_default_with_a_warning(client, caplog) -> None:  # noqa: ANN001
    url = f"http://example.org/StructureDefinition/nope-{uuid.uuid4()}"  # warned once per process
    with caplog.at_level(logging.WARNING, logger="fhir_server.profiles"):
        r = post(client, _claiming_unknown(url))
    assert r.status_code == 201, r.text
    assert r.json()["meta"]["profile"] == [url]
    assert any(url in rec.getMessage() for rec in caplog.records), caplog.records


def test_unknown_profile_does_not_hide_a_known_one(client) -> None:  # noqa: ANN001
    p = _invalid_claiming_patient()
    p["meta"]["profile"].append(NOPE)
    _assert_identifier_422(post(client, p))


# -- 6. required US Core ---------------------------------------------------------------------


def test_require_us_core_610(make_client) -> None:  # noqa: ANN001
    c = make_client(require_profiles="us-core-6.1.0")
    # Patient: one US Core profile, so a Patient that claims nothing is validated against it.
    r = post(c, unprofiled_patient())
    assert r.status_code == 201, r.text
    issues = assert_outcome(post(c, unprofiled_patient(identifier=None)), 422)
    assert issues[0]["severity"] == "error" and issues[0]["expression"] == ["Patient.identifier"], issues
    assert PAT6 in issues[0]["diagnostics"]
    assert count(c, "Patient") == 1
    # Observation: many profiles, so a claim is needed.
    lab = inferno(*LAB)
    del lab["meta"]
    issues = assert_outcome(post(c, lab), 422)
    assert [(i["severity"], i["code"]) for i in issues] == [("error", "required")], issues
    assert issues[0]["expression"] == ["Observation.meta.profile"]
    assert "us-core-6.1.0" in issues[0]["diagnostics"]
    assert f"{US_CORE}us-core-observation-lab" in issues[0]["diagnostics"]
    assert count(c, "Observation") == 0
    # ... which is then enforced.
    lab["meta"] = {"profile": [f"{US_CORE}us-core-observation-lab|6.1.0"]}
    r = post(c, lab)
    assert r.status_code == 201, r.text
    del lab["category"]
    issue = error_at(assert_outcome(post(c, lab), 422), "Observation.category", "required")
    assert f"{US_CORE}us-core-observation-lab|6.1.0" in issue["diagnostics"]
    assert count(c, "Observation") == 1
    # Account: not profiled by US Core.
    assert post(c, {"resourceType": "Account", "status": "active"}).status_code == 201


def test_require_us_core_610_applies_to_transactions(make_client) -> None:  # noqa: ANN001
    c = make_client(require_profiles="us-core-6.1.0")
    lab = inferno(*LAB)
    del lab["meta"]
    bundle = transaction(("POST", "Patient", unprofiled_patient()), ("POST", "Observation", lab))
    issues = assert_outcome(c.post("/fhir", json=bundle), 422)
    assert "Bundle.entry[1]" in issues[0]["diagnostics"], issues
    assert count(c, "Patient") == 0


def test_require_us_core_610_in_validate(make_client) -> None:  # noqa: ANN001
    c = make_client(require_profiles="us-core-6.1.0")
    error_at(validate(c, unprofiled_patient(identifier=None)), "Patient.identifier", "required", PAT6)
    lab = inferno(*LAB)
    del lab["meta"]
    error_at(validate(c, lab), "Observation.meta.profile", "required")
    assert_all_ok(validate(c, {"resourceType": "Account", "status": "active"}))


def test_require_us_core_311(make_client) -> None:  # noqa: ANN001
    c = make_client(require_profiles="us-core-3.1.1")
    pat3 = f"{US_CORE}us-core-patient|3.1.1"
    assert post(c, unprofiled_patient()).status_code == 201
    issue = error_at(assert_outcome(post(c, unprofiled_patient(identifier=None)), 422), "Patient.identifier",
                     "required")
    assert pat3 in issue["diagnostics"]
    lab = inferno(*LAB)
    del lab["meta"]
    issues = assert_outcome(post(c, lab), 422)
    assert issues[0]["expression"] == ["Observation.meta.profile"] and "us-core-3.1.1" in issues[0]["diagnostics"]
    # Encounter has one 3.1.1 profile: validated without a claim (us-core-encounter requires type).
    enc = inferno(*ENCOUNTER)
    del enc["meta"]
    assert post(c, enc).status_code == 201
    del enc["type"]
    issue = error_at(assert_outcome(post(c, enc), 422), "Encounter.type", "required")
    assert f"{US_CORE}us-core-encounter|3.1.1" in issue["diagnostics"]


def _smoking_status_without_category() -> dict[str, Any]:
    # Valid against us-core-smokingstatus|3.1.1, not against 6.1.0 (which requires a category).
    s = inferno(P355, 7)
    assert s["meta"]["profile"] == [f"{US_CORE}us-core-smokingstatus"]
    del s["category"]
    return s


def test_require_us_core_610_is_not_met_by_a_311_claim(make_client) -> None:  # noqa: ANN001
    c = make_client(require_profiles="us-core-6.1.0")
    s = _smoking_status_without_category()
    s["meta"]["profile"] = [f"{US_CORE}us-core-smokingstatus|3.1.1"]
    assert post(c, s).status_code == 422


def test_require_us_core_311_checks_311_for_an_unversioned_claim(make_client) -> None:  # noqa: ANN001
    c = make_client(require_profiles="us-core-3.1.1")
    s = inferno(P355, 7)  # claims the unversioned us-core-smokingstatus
    del s["issued"]  # required by 3.1.1 only
    assert post(c, s).status_code == 422


# -- $validate robustness (product bugs found while writing these tests) ---------------------


def test_validate_with_refused_profile_and_non_string_claim_is_200(make_client) -> None:  # noqa: ANN001
    # Was a 500 (ProfileValidator.known() on a number), fixed while these tests were written.
    c = make_client(unknown_profiles="refuse")
    p = _claiming_unknown()
    p["meta"]["profile"].append(1)
    issues = validate(c, p)
    error_at(issues, "Patient.meta.profile", "not-supported")
    error_at(issues, "Patient.meta.profile[1]", "structure")


def test_validate_with_required_profiles_and_array_meta_is_200(make_client) -> None:  # noqa: ANN001
    c = make_client(require_profiles="us-core-6.1.0")
    lab = inferno(*LAB)
    lab["meta"] = ["not an object"]
    r = c.post("/fhir/Observation/$validate", json=lab)
    assert r.status_code == 200, r.text


def test_validate_of_string_meta_profile_reports_only_structure(make_client) -> None:  # noqa: ANN001
    c = make_client(unknown_profiles="refuse")
    p = patient_355()
    p["meta"]["profile"] = NOPE
    issues = validate(c, p)
    assert all(i["code"] != "not-supported" for i in issues), issues


# -- 7. CapabilityStatement ------------------------------------------------------------------


def test_capability_statement_lists_profiles_and_validate(client) -> None:  # noqa: ANN001
    r = client.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    resources = {res["type"]: res for res in r.json()["rest"][0]["resource"]}
    patient = resources["Patient"]["supportedProfile"]
    assert f"{US_CORE}us-core-patient|3.1.1" in patient and PAT6 in patient
    assert all(p.partition("|")[0] == f"{US_CORE}us-core-patient" for p in patient), patient
    observation = resources["Observation"]["supportedProfile"]
    for version in ("3.1.1", "6.1.0"):
        assert f"{US_CORE}us-core-observation-lab|{version}" in observation
        assert f"{US_CORE}us-core-smokingstatus|{version}" in observation
    assert f"{US_CORE}us-core-condition-problems-health-concerns|6.1.0" in resources["Condition"]["supportedProfile"]
    assert "supportedProfile" not in resources["Account"]
    validate_op = {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}
    missing = [t for t, res in resources.items() if validate_op not in res.get("operation", [])]
    assert missing == []
    # Every listed profile is one $validate knows.
    for rtype in ("Patient", "Condition"):
        for profile in resources[rtype]["supportedProfile"]:
            issues = validate(client, {"resourceType": rtype}, params={"profile": profile})
            assert "not-supported" not in [i["code"] for i in errors(issues)], (profile, issues)
