"""The Inferno reference patients validate against their declared US Core profiles."""

from __future__ import annotations

from fhir_server.validation.validator import ProfileValidator
from tests.validation.data import US_CORE, inferno_entries, needs_shared

pytestmark = needs_shared

# Resources of the reference data that are not valid, with the errors that say why.
KNOWN_INVALID = {
    # The brief's known structural defect: Period has no "stop".
    ("uscore_bundle_patient_355.json", 266): {
        ("structure", "Observation.effective.ofType(Period).stop"),
    },
    # "Sample patient derived from US Core v8.0.0 examples": it declares the unversioned
    # us-core-patient, which here means 6.1.0 (the newest loaded); US Core 6.1.0 (and 3.1.1)
    # require gender, and 6.1.0's us-core-sex takes a valueCode, not the valueCoding of 8.0.0.
    ("uscore_bundle_patient_908.json", 0): {
        ("required", "Patient.gender"),
        ("structure", "Patient.extension[0].value.ofType(Coding)"),
        ("required", "Patient.extension[0].value"),
    },
}

# Against US Core 3.1.1 (Inferno's 3.1.1 preset uses patients 85 and 355): 3.1.1 binds the
# pulse-oximetry FlowRate component to ucum-vitals-common (required), which has no L/min.
KNOWN_INVALID_311 = {
    ("uscore_bundle_patient_85.json", 233): {
        ("code-invalid", "Observation.component[0].value.ofType(Quantity)")
    },
    ("uscore_bundle_patient_355.json", 266): {("structure", "Observation.effective.ofType(Period).stop")},
}


def _errors(issues: list) -> set[tuple[str, str]]:
    return {(i.code, i.expression) for i in issues if i.is_error}


def test_every_resource_validates_against_its_declared_profiles(shipped: ProfileValidator) -> None:
    checked = 0
    failures = {}
    for name, index, resource in inferno_entries():
        errors = _errors(shipped.validate(resource))
        if errors != KNOWN_INVALID.get((name, index), set()):
            failures[(name, index)] = errors
        checked += 1
    assert checked == 803
    assert failures == {}


def test_patients_85_and_355_validate_against_us_core_311(shipped: ProfileValidator) -> None:
    checked = 0
    failures = {}
    for name, index, resource in inferno_entries():
        if name not in ("uscore_bundle_patient_85.json", "uscore_bundle_patient_355.json"):
            continue
        declared = (resource.get("meta") or {}).get("profile", [])
        pinned = [p + "|3.1.1" for p in declared if shipped.known(p + "|3.1.1")]
        if not pinned:
            continue
        errors = _errors(shipped.validate(resource, pinned))
        if errors != KNOWN_INVALID_311.get((name, index), set()):
            failures[(name, index)] = errors
        checked += 1
    assert checked > 600
    assert failures == {}


def test_declared_profiles_that_are_not_loaded_are_warnings(shipped: ProfileValidator) -> None:
    unknown = 0
    for _, _, resource in inferno_entries():
        for issue in shipped.validate(resource, structural=False):
            if issue.code == "not-supported":
                assert issue.severity == "warning"
                assert not shipped.known(issue.profile)
                unknown += 1
    # us-core-observation-clinical-test (5.0.1), ...-lab|7.0.0, ...-adi-documentreference|8.0.0, ...
    assert unknown >= 20


def test_the_known_invalid_resources_are_reported_with_their_profile(shipped: ProfileValidator) -> None:
    r = next(r for n, i, r in inferno_entries() if (n, i) == ("uscore_bundle_patient_908.json", 0))
    issues = [i for i in shipped.validate(r) if i.is_error]
    gender = next(i for i in issues if i.expression == "Patient.gender")
    assert gender.profile == US_CORE + "us-core-patient|6.1.0"
    assert gender.element == "Patient.gender"
    assert "Patient.gender" in gender.to_outcome_issue().diagnostics
