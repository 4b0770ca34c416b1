"""The ProfileValidator API: what it returns for what, and the OperationOutcome forms."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhir_server.errors import OutcomeIssue
from fhir_server.validation import ProfileIssue, ProfileValidator, operation_outcome, to_outcome_issues
from fhir_server.validation.validator import shipped_packages
from tests.validation.data import US_CORE, needs_shared, resource

PATIENT6 = US_CORE + "us-core-patient|6.1.0"


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "meta": {"profile": [US_CORE + "us-core-patient"]},
        "identifier": [{"system": "urn:mrn", "value": "1"}],
        "name": [{"family": "Doe"}],
        "gender": "female",
    }


def test_valid_patient_has_no_errors_and_reports_must_support_as_information(
    shipped: ProfileValidator,
) -> None:
    issues = shipped.validate(_patient())
    assert not [i for i in issues if i.is_error]
    ms = [i for i in issues if i.severity == "information"]
    assert {i.element for i in ms} >= {"Patient.birthDate", "Patient.address", "Patient.telecom.system"} - {
        "Patient.telecom.system"}  # fmt: skip
    assert all(i.code == "informational" and i.profile == PATIENT6 for i in ms)
    assert not [i for i in shipped.validate(_patient(), must_support=False) if i.severity == "information"]


def test_meta_profile_unversioned_means_the_newest_loaded(shipped: ProfileValidator) -> None:
    p = _patient()
    del p["identifier"]
    [issue] = [i for i in shipped.validate(p) if i.is_error]
    assert issue.profile == PATIENT6
    assert (issue.severity, issue.code, issue.expression, issue.element) == (
        "error", "required", "Patient.identifier", "Patient.identifier")  # fmt: skip


def test_explicit_profiles_override_meta_profile(shipped: ProfileValidator) -> None:
    p = _patient()
    del p["gender"]
    issues = shipped.validate(p, [US_CORE + "us-core-patient|3.1.1", US_CORE + "us-core-patient|6.1.0"])
    assert sorted(i.profile for i in issues if i.is_error) == [
        US_CORE + "us-core-patient|3.1.1", US_CORE + "us-core-patient|6.1.0"]  # fmt: skip
    assert shipped.validate(p, []) == []


def test_unknown_profiles_and_profiles_for_other_types(shipped: ProfileValidator) -> None:
    p = _patient()
    p["meta"]["profile"] = ["http://example.org/no-such-profile"]
    [w] = shipped.validate(p)
    assert (w.severity, w.code, w.expression) == ("warning", "not-supported", "Patient.meta.profile")
    [e] = shipped.validate(p, [US_CORE + "us-core-encounter"])
    assert (e.severity, e.code) == ("error", "invalid")


def test_structural_issues_come_first_and_can_be_left_out(shipped: ProfileValidator) -> None:
    p = _patient()
    p["gender"] = "M"
    with_structure = [i for i in shipped.validate(p) if i.is_error]
    assert [(i.code, i.expression, i.profile) for i in with_structure] == [
        ("code-invalid", "Patient.gender", "")
    ]
    assert not [i for i in shipped.validate(p, structural=False) if i.is_error]


@pytest.mark.parametrize(
    "junk", [None, 1, "x", [], {"resourceType": 3}, {"resourceType": "Patient", "name": 5}]
)
def test_never_raises(shipped: ProfileValidator, junk: Any) -> None:
    issues = shipped.validate(junk, [PATIENT6])
    assert all(isinstance(i, ProfileIssue) for i in issues)


def test_operation_outcome_forms(shipped: ProfileValidator) -> None:
    p = _patient()
    del p["identifier"]
    issues = [i for i in shipped.validate(p) if i.is_error]
    [o] = to_outcome_issues(issues)
    assert isinstance(o, OutcomeIssue)
    assert o.expression == ("Patient.identifier",)
    assert PATIENT6 in o.diagnostics and "Patient.identifier" in o.diagnostics
    outcome = operation_outcome(issues)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["text"] == f"{PATIENT6}, Patient.identifier"
    assert operation_outcome([])["issue"][0]["severity"] == "information"


def test_profiles_known_and_warm_up(shipped: ProfileValidator) -> None:
    patients = shipped.profiles("Patient")
    assert patients == [US_CORE + "us-core-patient|3.1.1", US_CORE + "us-core-patient|6.1.0"]
    assert len(shipped.profiles()) >= 70
    assert shipped.known(US_CORE + "us-core-patient") and not shipped.known(US_CORE + "us-core-patient|9.9.9")
    assert shipped.warm_up([US_CORE + "us-core-patient", "http://example.org/x"]) == 1


@needs_shared
def test_target_profiles_on_this_server() -> None:
    obs = resource("uscore_bundle_patient_client_test.json", 35)  # us-core-body-weight
    obs["subject"] = {"reference": "Patient/p1"}
    good = _patient()
    good["meta"] = {"profile": [US_CORE + "us-core-patient"]}
    bad = copy.deepcopy(good)
    del bad["identifier"]
    bad["meta"] = {}
    store = {"Patient/p1": good}

    def errors(mode: str) -> list[tuple[str, str]]:
        v = ProfileValidator(shipped_packages(), resolver=store.get, target_profiles=mode)  # type: ignore[arg-type]
        return [
            (i.code, i.expression)
            for i in v.validate(obs, [US_CORE + "us-core-body-weight|6.1.0"])
            if i.is_error
        ]

    assert errors("off") == errors("meta") == errors("validate") == []
    store["Patient/p1"] = bad
    assert errors("off") == []
    assert errors("meta") == [("structure", "Observation.subject.reference")]
    assert errors("validate") == [("structure", "Observation.subject.reference")]
    # a resolver given per call (the request's transaction) rather than to the validator
    v = ProfileValidator(shipped_packages(), target_profiles="validate")
    issues = v.validate(obs, [US_CORE + "us-core-body-weight|6.1.0"], resolver=store.get)
    assert [(i.code, i.expression) for i in issues if i.is_error] == [
        ("structure", "Observation.subject.reference")
    ]
    assert not [i for i in v.validate(obs, [US_CORE + "us-core-body-weight|6.1.0"]) if i.is_error]
