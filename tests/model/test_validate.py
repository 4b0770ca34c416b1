"""The structural validator: shared Synthea data is valid, broken variants give the exact issue."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_server.model import jsonio
from fhir_server.model.facts import Facts, get_facts
from fhir_server.model.validate import Issue, Validator, validate_resource

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SYNTHEA = SHARED / "data" / "synthea"
DATA_FILES = sorted((SYNTHEA / "small-10-patients").glob("*.json")) + sorted(
    (SYNTHEA / "inferno-reference").glob("*.json")
)

XHTML = "http://www.w3.org/1999/xhtml"
GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
GENDER_CS = "http://hl7.org/fhir/administrative-gender"


def J(text: str) -> Any:
    """Parse as the server does, so 1.50 arrives as a JsonDecimal."""
    return jsonio.loads(text)


def div(inner: str) -> str:
    return f'<div xmlns="{XHTML}">{inner}</div>'


PATIENT = J(
    """{
  "resourceType": "Patient",
  "id": "p1",
  "meta": {"versionId": "3", "lastUpdated": "2024-01-02T03:04:05.678Z"},
  "text": {"status": "generated",
           "div": "<div xmlns=\\"http://www.w3.org/1999/xhtml\\">Jane <b>Doe</b></div>"},
  "extension": [
    {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
     "extension": [
       {"url": "ombCategory",
        "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
       {"url": "text", "valueString": "White"}]}
  ],
  "identifier": [{"system": "http://example.org/mrn", "value": "123"}],
  "active": true,
  "name": [{"use": "official", "family": "Doe", "given": ["Jane", "Q"]}],
  "gender": "female",
  "birthDate": "1970-01-01",
  "deceasedBoolean": false,
  "multipleBirthInteger": 2,
  "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                 "code": "M"}]},
  "photo": [{"contentType": "image/png", "data": "aGVsbG8=", "size": 5}]
}"""
)

OBSERVATION = J(
    """{
  "resourceType": "Observation",
  "id": "o1",
  "status": "final",
  "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
  "subject": {"reference": "Patient/p1"},
  "effectiveDateTime": "2024-01-01T10:00:00+01:00",
  "issued": "2024-01-01T10:00:00.123Z",
  "valueQuantity": {"value": 72.0, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
}"""
)

CONDITION = J(
    """{
  "resourceType": "Condition",
  "id": "c1",
  "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                 "code": "active"}]},
  "code": {"text": "Headache"},
  "subject": {"reference": "Patient/p1"}
}"""
)

BASES = {"patient": PATIENT, "observation": OBSERVATION, "condition": CONDITION}


def errors(issues: list[Issue]) -> list[tuple[str, str, str]]:
    return [(i.severity, i.code, i.expression) for i in issues]


def variant(base: str, *ops: tuple[Any, ...]) -> Any:
    """A deep copy of a base resource with ("set", path, value) / ("del", path) applied."""
    obj = copy.deepcopy(BASES[base])
    for op in ops:
        *parents, last = op[1]
        target = obj
        for p in parents:
            target = target[p]
        if op[0] == "set":
            target[last] = copy.deepcopy(op[2])
        else:
            del target[last]
    return obj


def S(path: str | tuple[Any, ...], value: Any) -> tuple[Any, ...]:
    return ("set", (path,) if isinstance(path, str) else path, value)


def D(path: str | tuple[Any, ...]) -> tuple[Any, ...]:
    return ("del", (path,) if isinstance(path, str) else path)


def P(*ops: tuple[Any, ...]) -> Any:
    return variant("patient", *ops)


def O(*ops: tuple[Any, ...]) -> Any:  # noqa: E743
    return variant("observation", *ops)


def C(*ops: tuple[Any, ...]) -> Any:
    return variant("condition", *ops)


# -- the shared Synthea data ---------------------------------------------------------------------

# Genuinely invalid R4 in the shared data, with what is wrong:
# - inferno-reference/uscore_bundle_patient_355.json, Observation 3c766796-...: its effectivePeriod has
#   "stop" where Period only has "start" and "end" (an unknown element; fhir.resources R4B rejects it too).
# The brief mentions a second invalid Inferno resource; no other resource in these files breaks any rule
# checked here (nor fails the R4B models), see the report accompanying this validator.
KNOWN_INVALID = {
    ("uscore_bundle_patient_355.json", "Observation", "3c766796-d8a0-480f-8215-f1e7e3afab21"): [
        ("error", "structure", "Observation.effective.ofType(Period).stop")
    ],
}


def _entries(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    doc = jsonio.loads(path.read_bytes())
    if doc.get("resourceType") == "Bundle":
        for i, entry in enumerate(doc["entry"]):
            yield i, entry["resource"]
    else:
        yield -1, doc


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared data not present at {SYNTHEA}")
@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.name)
def test_shared_synthea_resources_are_valid(path: Path) -> None:
    found: dict[tuple[str, str, str], list[tuple[str, str, str]]] = {}
    count = 0
    for _, res in _entries(path):
        count += 1
        issues = validate_resource(res, res["resourceType"])
        if issues:
            found[(path.name, res["resourceType"], res.get("id", ""))] = errors(issues)
    expected = {k: v for k, v in KNOWN_INVALID.items() if k[0] == path.name}
    assert count > 0
    assert found == expected


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared data not present at {SYNTHEA}")
def test_shared_bundle_validates_as_a_whole() -> None:
    # A whole transaction Bundle, entries validated recursively: only the known invalid entry shows.
    path = SYNTHEA / "inferno-reference" / "uscore_bundle_patient_355.json"
    bundle = jsonio.loads(path.read_bytes())
    bad_id = "3c766796-d8a0-480f-8215-f1e7e3afab21"
    index = next(i for i, e in enumerate(bundle["entry"]) if e["resource"].get("id") == bad_id)
    assert errors(validate_resource(bundle, "Bundle")) == [
        ("error", "structure", f"Bundle.entry[{index}].resource.effective.ofType(Period).stop")
    ]


# -- broken variants ----------------------------------------------------------------------------

E = "error"
EXT = {"url": "http://example.org/x", "valueBoolean": True}
CONTAINED_ORG = {"resourceType": "Organization", "id": "org1", "name": "Acme"}
REF_ORG = {"reference": "#org1"}
UUID = "urn:uuid:8c3b5c0e-2d1a-4a39-9c5c-0e1f7a1c2b3d"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"


def with_contained(resource: dict[str, Any]) -> Any:
    """The base Patient with one contained resource that its managingOrganization references (dom-3)."""
    return P(S("contained", [resource]), S("managingOrganization", REF_ORG))


def bad(name: str, resource: Any, *expected: str, expected_type: str | None = None) -> Any:
    """A broken variant: the exact, complete list of issues, each as "code expression"."""
    issues = [tuple(e.split(" ", 1)) if " " in e else (e, "") for e in expected]
    return pytest.param(resource, expected_type, issues, id=name)


BROKEN = [
    bad("gender-foo", P(S("gender", "foo")), "code-invalid Patient.gender"),
    bad("active-string", P(S("active", "true")), "structure Patient.active"),
    bad("active-number", P(S("active", 1)), "structure Patient.active"),
    bad("multiplebirth-string", P(S("multipleBirthInteger", "2")),
        "structure Patient.multipleBirth.ofType(integer)"),
    bad("integer-bool", P(S("multipleBirthInteger", True)),
        "structure Patient.multipleBirth.ofType(integer)"),
    bad("integer-decimal-literal", P(S("multipleBirthInteger", J("2.0"))),
        "structure Patient.multipleBirth.ofType(integer)"),
    bad("integer-out-of-range", P(S("multipleBirthInteger", 2**31)),
        "value Patient.multipleBirth.ofType(integer)"),
    bad("integer-huge-literal", P(S("multipleBirthInteger", J("12345678901234567890"))),
        "value Patient.multipleBirth.ofType(integer)"),
    bad("unsignedint-negative", P(S(("photo", 0, "size"), -1)), "value Patient.photo[0].size"),
    bad("decimal-string", O(S(("valueQuantity", "value"), "1.5")),
        "structure Observation.value.ofType(Quantity).value"),
    bad("decimal-bool", O(S(("valueQuantity", "value"), False)),
        "structure Observation.value.ofType(Quantity).value"),
    bad("empty-object", P(S("maritalStatus", {})), "structure Patient.maritalStatus"),
    bad("empty-object-in-array", P(S("identifier", [{}])), "structure Patient.identifier[0]"),
    bad("only-id-object", P(S("maritalStatus", {"id": "m"})), "invariant Patient.maritalStatus"),
    bad("empty-array", P(S("name", [])), "structure Patient.name"),
    bad("empty-string", P(S(("name", 0, "family"), "")), "value Patient.name[0].family"),
    bad("whitespace-string", P(S(("name", 0, "given"), ["Jane", " \t "])), "value Patient.name[0].given[1]"),
    bad("empty-date", P(S("birthDate", "")), "value Patient.birthDate"),
    bad("null-in-primitive-array", P(S(("name", 0, "given"), ["Jane", None])),
        "structure Patient.name[0].given[1]"),
    bad("null-in-complex-array", P(S("name", [None])), "structure Patient.name[0]"),
    bad("null-single", P(S("gender", None)), "structure Patient.gender"),
    bad("unknown-member", P(S("foo", "bar")), "structure Patient.foo"),
    bad("unknown-nested", P(S(("name", 0, "nickname"), "J")), "structure Patient.name[0].nickname"),
    bad("fhir-comments", P(S("fhir_comments", ["hi"])), "structure Patient.fhir_comments"),
    bad("resourcetype-in-datatype", P(S(("name", 0, "resourceType"), "HumanName")),
        "structure Patient.name[0].resourceType"),
    bad("companion-of-complex", P(S("_maritalStatus", {"id": "x"})), "structure Patient._maritalStatus"),
    bad("array-for-single", P(S("gender", ["female"])), "structure Patient.gender"),
    bad("single-for-array", P(S("name", {"family": "Doe"})), "structure Patient.name"),
    bad("object-for-primitive", P(S("gender", {"value": "female"})), "structure Patient.gender"),
    bad("string-for-complex", P(S("maritalStatus", "M")), "structure Patient.maritalStatus"),
    bad("missing-status", O(D("status")), "required Observation.status"),
    bad("missing-code", O(D("code")), "required Observation.code"),
    bad("status-not-in-vs", O(S("status", "done")), "code-invalid Observation.status"),
    bad("two-choice-types", P(S("deceasedDateTime", "2020-01-01")), "structure Patient.deceased"),
    bad(
        "choice-value-and-other-companion",
        O(S("_valueString", {"extension": [EXT]})),
        "structure Observation.value",
    ),
    bad("bad-date-day", P(S("birthDate", "2023-02-30")), "value Patient.birthDate"),
    bad("bad-date-month", P(S("birthDate", "2023-13-01")), "value Patient.birthDate"),
    bad("not-a-leap-day", P(S("birthDate", "2023-02-29")), "value Patient.birthDate"),
    bad("datetime-without-zone", O(S("effectiveDateTime", "2024-01-01T10:00:00")),
        "value Observation.effective.ofType(dateTime)"),
    bad("datetime-bad-day", O(S("effectiveDateTime", "2024-04-31T10:00:00Z")),
        "value Observation.effective.ofType(dateTime)"),
    bad("instant-date-only", O(S("issued", "2024-01-01")), "value Observation.issued"),
    bad("bad-id", P(S("id", "p 1")), "value Patient.id"),
    bad("id-too-long", P(S("id", "x" * 65)), "value Patient.id"),
    bad("id-number", P(S("id", 1)), "structure Patient.id"),
    bad("uri-with-space", P(S(("identifier", 0, "system"), "http://example.org/a b")),
        "value Patient.identifier[0].system"),
    bad("code-leading-space", P(S("language", " en")), "value Patient.language"),
    bad("bad-base64", P(S(("photo", 0, "data"), "abc")), "value Patient.photo[0].data"),
    bad("cc-binding-bad-code", C(S(("clinicalStatus", "coding", 0, "code"), "cured")),
        "code-invalid Condition.clinicalStatus.coding[0].code"),
    bad("cc-binding-no-coding", C(S("clinicalStatus", {"text": "active"})),
        "code-invalid Condition.clinicalStatus"),
    bad(
        "cc-binding-other-system-only",
        C(S(("clinicalStatus", "coding", 0, "system"), "http://snomed.info/sct")),
        "code-invalid Condition.clinicalStatus",
    ),
    bad(
        "extension-value-and-extension",
        P(S("extension", [{"url": "http://example.org/x", "valueString": "a", "extension": [EXT]}])),
        "invariant Patient.extension[0]",
    ),
    bad("extension-neither", P(S("extension", [{"url": "http://example.org/x"}])),
        "invariant Patient.extension[0]"),
    bad("extension-without-url", P(S("extension", [{"valueString": "a"}])),
        "required Patient.extension[0].url"),
    bad("extension-url-empty", P(S("extension", [{"url": "", "valueString": "a"}])),
        "value Patient.extension[0].url"),
    bad("nested-extension-bad-value", P(S(("extension", 0, "extension", 1, "valueString"), 5)),
        "structure Patient.extension[0].extension[1].value.ofType(string)"),
    bad("xhtml-malformed", P(S(("text", "div"), div("<b>x</i>"))), "value Patient.text.div"),
    bad("xhtml-script", P(S(("text", "div"), div("x<script>alert(1)</script>"))), "value Patient.text.div"),
    bad("xhtml-event-attribute", P(S(("text", "div"), div('<a href="#" onclick="x()">x</a>'))),
        "value Patient.text.div"),
    bad("xhtml-no-namespace", P(S(("text", "div"), "<div>x</div>")), "value Patient.text.div"),
    bad("xhtml-not-div", P(S(("text", "div"), f'<p xmlns="{XHTML}">x</p>')), "value Patient.text.div"),
    bad("xhtml-doctype", P(S(("text", "div"), '<!DOCTYPE div [<!ENTITY e "x">]>' + div("&e;"))),
        "value Patient.text.div"),
    bad("xhtml-doctype-inside", P(S(("text", "div"), div('<!DOCTYPE html>x'))), "value Patient.text.div"),
    bad("xhtml-html-entity", P(S(("text", "div"), div("a&nbsp;b"))), "value Patient.text.div"),
    bad("xhtml-form-element", P(S(("text", "div"), div('<form action="x">y</form>'))),
        "value Patient.text.div"),
    bad("xhtml-empty", P(S(("text", "div"), div("  "))), "value Patient.text.div"),
    bad("xhtml-companion", P(S(("text", "_div"), {"id": "d"})), "structure Patient.text._div"),
    bad("narrative-missing-div", P(D(("text", "div"))), "required Patient.text.div"),
    bad(
        "contained-contains",
        with_contained({**CONTAINED_ORG, "contained": [{"resourceType": "Organization", "id": "o2"}]}),
        "invariant Patient.contained[0].contained",
    ),
    bad(
        "contained-version",
        with_contained({**CONTAINED_ORG, "meta": {"versionId": "1"}}),
        "invariant Patient.contained[0].meta.versionId",
    ),
    bad(
        "contained-last-updated",
        with_contained({**CONTAINED_ORG, "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}),
        "invariant Patient.contained[0].meta.lastUpdated",
    ),
    bad(
        "contained-text",
        with_contained({**CONTAINED_ORG, "text": {"status": "generated", "div": div("Acme")}}),
        "invariant Patient.contained[0].text",
    ),
    bad("contained-not-referenced", P(S("contained", [CONTAINED_ORG])), "invariant Patient.contained[0]"),
    bad(
        "contained-invalid-inside",
        with_contained({**CONTAINED_ORG, "active": "yes"}),
        "structure Patient.contained[0].active",
    ),
    bad(
        "contained-unknown-type",
        with_contained({"resourceType": "Foo", "id": "org1"}),
        "invalid Patient.contained[0]",
    ),
    bad("contained-no-type", with_contained({"id": "org1"}),
        "required Patient.contained[0]"),
    bad("companion-string", P(S("_birthDate", "x")), "structure Patient.birthDate"),
    bad("companion-empty", P(S("_birthDate", {})), "structure Patient.birthDate"),
    bad("companion-array", P(S("_birthDate", [{"id": "b"}])), "structure Patient.birthDate"),
    bad("companion-unknown-member", P(S("_birthDate", {"value": "1970"})),
        "structure Patient.birthDate.value"),
    bad("companion-bad-extension", P(S("_birthDate", {"extension": [{"url": "x"}]})),
        "invariant Patient.birthDate.extension[0]"),
    bad("companion-only-id-without-value", P(D("birthDate"), S("_birthDate", {"id": "b"})),
        "invariant Patient.birthDate"),
    bad("companion-array-length", P(S(("name", 0, "_given"), [None])), "structure Patient.name[0].given"),
    bad(
        "companion-null-against-null",
        P(S(("name", 0, "given"), ["Jane", None]), S(("name", 0, "_given"), [None, None])),
        "structure Patient.name[0].given[1]",  # reported once, not once per array
    ),
    bad("companion-null-beyond-values", P(S(("name", 0, "_given"), [None, None, None])),
        "structure Patient.name[0].given", "structure Patient.name[0].given[2]"),
    bad("companion-single-for-array", P(S(("name", 0, "_given"), {"id": "g"})),
        "structure Patient.name[0].given"),
    bad("expected-type-mismatch", O(), "invalid Observation", expected_type="Patient"),
    bad("unknown-resource-type", {"resourceType": "Foo", "id": "1"}, "invalid"),
    bad("lowercase-resource-type", {"resourceType": "patient"},
        "invalid", "invalid", expected_type="Patient"),
    bad("abstract-resource-type", {"resourceType": "DomainResource"}, "invalid"),
    bad("r4-type-not-served", {"resourceType": "MedicinalProduct"}, "not-supported MedicinalProduct"),
    bad("missing-resource-type", {"id": "1", "gender": "male"}, "required"),
    bad("resource-type-not-string", {"resourceType": 1}, "structure"),
    bad("root-array", [PATIENT], "structure"),
    bad("root-string", "Patient", "structure"),
    bad("root-null", None, "structure"),
    bad("root-number", 42, "structure"),
    bad(
        "bundle-entry-invalid",
        {"resourceType": "Bundle", "type": "collection",
         "entry": [{"fullUrl": UUID, "resource": P(S("gender", "x"))}]},
        "code-invalid Bundle.entry[0].resource.gender",
    ),
    bad(
        "bundle-entry-no-type",
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"id": "1"}}]},
        "required Bundle.entry[0].resource",
    ),
    bad("bundle-missing-type", {"resourceType": "Bundle"}, "required Bundle.type"),
    bad(
        "parameters-resource-invalid",
        {"resourceType": "Parameters", "parameter": [{"name": "r", "resource": O(D("status"))}]},
        "required Parameters.parameter[0].resource.status",
    ),
    bad("r4-only-required-element", {"resourceType": "Evidence", "status": "draft"},
        "required Evidence.exposureBackground"),
    bad("backbone-required", P(S("link", [{"type": "seealso"}])), "required Patient.link[0].other"),
    bad("backbone-binding", P(S("contact", [{"gender": "x", "name": {"family": "A"}}])),
        "code-invalid Patient.contact[0].gender"),
]


@pytest.mark.parametrize(("resource", "expected_type", "expected"), BROKEN)
def test_broken_variant(resource: Any, expected_type: str | None, expected: list[tuple[str, str]]) -> None:
    issues = validate_resource(resource, expected_type)
    assert errors(issues) == [(E, code, expr) for code, expr in expected], [i.diagnostics for i in issues]
    for issue in issues:
        assert issue.diagnostics


def test_there_are_enough_broken_variants() -> None:
    assert len(BROKEN) >= 30
    assert len({c.id for c in BROKEN}) == len(BROKEN)


def test_diagnostics_name_the_element_and_the_problem() -> None:
    (issue,) = validate_resource(P(S("gender", "foo")))
    assert GENDER_VS in issue.diagnostics and "'foo'" in issue.diagnostics and "gender" in issue.diagnostics
    (issue,) = validate_resource(P(S("active", "true")))
    assert "'active'" in issue.diagnostics and "boolean" in issue.diagnostics
    (issue,) = validate_resource(P(S("foo", 1)))
    assert "'foo'" in issue.diagnostics
    (issue,) = validate_resource(P(S(("text", "div"), div("<script>x</script>"))))
    assert "script" in issue.diagnostics
    (issue,) = validate_resource(P(S("deceasedDateTime", "2020")))
    assert "deceasedBoolean" in issue.diagnostics and "deceasedDateTime" in issue.diagnostics


def test_all_issues_are_reported_not_just_the_first() -> None:
    broken = P(S("gender", "foo"), S("active", "yes"), S("foo", 1), S(("name", 0, "given"), [None]))
    assert errors(validate_resource(broken)) == [
        (E, "structure", "Patient.active"),
        (E, "structure", "Patient.name[0].given[0]"),
        (E, "code-invalid", "Patient.gender"),
        (E, "structure", "Patient.foo"),
    ]


# -- rules no R4 core element exercises (a required binding on Coding, max > 1): patched facts


def _patched_facts(type_name: str, element: str, **changes: Any) -> Facts:
    facts = get_facts()
    td = facts.types[type_name]
    el, code = td.members[element]
    new = dataclasses.replace(el, **changes)
    members = {**td.members, element: (new, code)}
    elements = tuple(new if e is el else e for e in td.elements)
    types = {**facts.types, type_name: dataclasses.replace(td, elements=elements, members=members)}
    return dataclasses.replace(facts, types=types)


def test_max_cardinality_above_one() -> None:
    validator = Validator(_patched_facts("Patient", "name", max=2))
    names = [{"family": "A"}, {"family": "B"}, {"family": "C"}]
    assert validator.validate({"resourceType": "Patient", "name": names[:2]}) == []
    expected = [(E, "structure", "Patient.name")]
    assert errors(validator.validate({"resourceType": "Patient", "name": names})) == expected


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ({"system": GENDER_CS, "code": "female"}, []),
        ({"system": GENDER_CS, "code": "foo"}, [("code-invalid", "Patient.meta.tag[0].code")]),
        ({"system": GENDER_CS}, [("code-invalid", "Patient.meta.tag[0].code")]),
        ({"system": "urn:x", "code": "female"}, [("code-invalid", "Patient.meta.tag[0].system")]),
        ({"code": "female"}, [("code-invalid", "Patient.meta.tag[0].system")]),
    ],
)
def test_coding_required_binding(tag: dict[str, str], expected: list[tuple[str, str]]) -> None:
    validator = Validator(_patched_facts("Meta", "tag", binding=GENDER_VS))
    resource = {"resourceType": "Patient", "meta": {"tag": [tag]}}
    issues = validator.validate(resource)
    assert errors(issues) == [(E, c, x) for c, x in expected]
    if expected:
        assert GENDER_VS in issues[0].diagnostics
    # The shared default validator (real facts) has no binding there.
    assert validate_resource(resource) == []


# -- valid edge cases ----------------------------------------------------------------------------

VALID: list[tuple[str, Any]] = [
    ("base-patient", PATIENT),
    ("base-observation", OBSERVATION),
    ("base-condition", CONDITION),
    ("decimal-trailing-zero", O(S(("valueQuantity", "value"), J("1.50")))),
    ("decimal-exponent", O(S(("valueQuantity", "value"), J("1e2")))),
    ("decimal-negative-exponent", O(S(("valueQuantity", "value"), J("-1.5E-3")))),
    ("decimal-integer", O(S(("valueQuantity", "value"), 0))),
    ("integer-bounds", P(S("multipleBirthInteger", -(2**31)))),
    ("integer-max", P(S("multipleBirthInteger", 2**31 - 1))),
    ("leap-day", P(S("birthDate", "2024-02-29"))),
    ("partial-dates", P(S("birthDate", "1970-01"), D("deceasedBoolean"), S("deceasedDateTime", "2020"))),
    ("instant-offset", O(S("issued", "2024-01-01T10:00:00.123456+14:00"))),
    ("birthdate-with-extension", P(S("_birthDate", {"id": "bd", "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
         "valueDateTime": "1970-01-01T10:00:00Z"}]}))),
    ("birthdate-extension-without-value",
     P(D("birthDate"), S("_birthDate", {"extension": [{"url": DAR, "valueCode": "unknown"}]}))),
    ("birthdate-companion-id-only-with-value", P(S("_birthDate", {"id": "bd"}))),
    ("null-with-companion",
     P(S(("name", 0, "given"), ["Jane", None]), S(("name", 0, "_given"), [None, {"extension": [EXT]}]))),
    ("companion-array-without-values",
     P(D(("name", 0, "given")), S(("name", 0, "_given"), [{"extension": [EXT]}]))),
    ("choice-with-own-companion",
     O(D("valueQuantity"), S("valueString", "high"), S("_valueString", {"id": "v"}))),
    ("required-element-by-companion", O(D("status"), S("_status", {"extension": [EXT]}))),
    ("contained-referenced", with_contained(CONTAINED_ORG)),
    ("contained-references-container", P(S("contained", [
        {"resourceType": "Provenance", "id": "prov", "target": [{"reference": "#"}],
         "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"display": "x"}}]}]))),
    ("contained-with-meta-profile",
     with_contained({**CONTAINED_ORG, "meta": {"profile": ["http://example.org/p"]}})),
    ("unicode-text", P(S(("name", 0, "family"), "Zo\u00eb\u00a0M\u00fcller \u6f22\u5b57"))),
    ("markdown-multiline", C(S("note", [{"text": "line 1\n\n* item"}]))),
    ("code-with-inner-space", P(S(("photo", 0, "contentType"), "text/plain; charset=utf-8"))),
    ("xhtml-rich", P(S(("text", "div"), div(
        '<p class="x" style="color:red">a&amp;b &#160;<br/><img src="#i" alt="i"/></p><!-- note -->'
        '<table border="1"><tr><td colspan="2" xml:lang="en">c</td></tr></table><a name="n">d</a>')))),
    ("xhtml-image-only", P(S(("text", "div"), div('<img src="x.png"/>')))),
    ("base64-with-newlines", P(S(("photo", 0, "data"), "aGVs\nbG8h"))),
    ("bundle-with-entries", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": UUID, "resource": PATIENT,
         "request": {"method": "PUT", "url": "Patient/p1"}},
        {"resource": OBSERVATION, "request": {"method": "POST", "url": "Observation"}}]}),
    ("bundle-entry-contained", {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": with_contained(CONTAINED_ORG)}]}),
    ("parameters-resource", {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": PATIENT}, {"name": "n", "valueInteger": 1}]}),
    ("empty-resource", {"resourceType": "Patient"}),
    ("evidence-r4", {"resourceType": "Evidence", "status": "draft",
                     "exposureBackground": {"reference": "EvidenceVariable/1"}}),
    ("plain-json-floats", json.loads(
        '{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
        ' "valueQuantity": {"value": 1.5}}'
    )),
    ("questionnaire-recursive-items", {"resourceType": "Questionnaire", "status": "draft", "item": [
        {"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "item": [
            {"linkId": "1.1.1", "type": "boolean"}]}]}]}),
]


@pytest.mark.parametrize(("case", "resource"), VALID, ids=[c[0] for c in VALID])
def test_valid_edge_case(case: str, resource: Any) -> None:
    assert validate_resource(resource, resource["resourceType"]) == []


def test_meta_version_and_last_updated_allowed_at_top_level() -> None:
    assert PATIENT["meta"]["versionId"] and validate_resource(PATIENT) == []


def test_validation_does_not_modify_the_resource() -> None:
    bad = P(S("gender", "foo"), S("contained", [CONTAINED_ORG]))
    before = copy.deepcopy(bad)
    validate_resource(bad)
    assert bad == before


@pytest.mark.parametrize(
    "junk",
    [
        {"resourceType": "Patient", "name": [[[]]]},
        {"resourceType": "Patient", "extension": [{"url": "x", "extension": "nope"}]},
        {"resourceType": "Patient", "_name": [None]},
        {"resourceType": "Patient", "contained": [None, 1, "x", []]},
        {"resourceType": "Patient", "_gender": [None], "gender": None},
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": []}]},
        {"resourceType": "Patient", "text": {"status": "generated", "div": "<div" + "<b>" * 50}},
    ],
)
def test_junk_never_raises(junk: Any) -> None:
    issues = validate_resource(junk)
    assert issues and all(i.severity == "error" and i.code != "exception" for i in issues)


def test_deep_nesting_reports_instead_of_raising() -> None:
    ext: dict[str, Any] = {"url": "x", "valueString": "leaf"}
    for _ in range(5000):
        ext = {"url": "x", "extension": [ext]}
    issues = validate_resource({"resourceType": "Patient", "extension": [ext]})
    assert errors(issues) == [(E, "structure", "")]


# -- cross-check with the fhir.resources R4B models: at least as strict ------------------------

_R4B: dict[str, Any] = {}
# Types whose R4 and R4B definitions agree for the variants used here.
_R4B_COMPARABLE = ("Patient", "Observation", "Condition", "Bundle")


def _r4b_rejects(obj: Any) -> bool:
    from fhir.resources.R4B import get_fhir_model_class

    rt = obj["resourceType"]
    if rt not in _R4B:
        _R4B[rt] = get_fhir_model_class(rt)
    try:
        # Through plain JSON, as the R4B models are used elsewhere (JsonDecimal would look like a string).
        _R4B[rt].model_validate(json.loads(jsonio.dumps(obj)))
    except Exception:
        return True
    return False


def _mutations(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every leaf and every object of the resource replaced, in turn, by each of a set of wrong values."""
    replacements: list[Any] = [None, "", " ", [], {}, [None], "x y", 0, -1, 2**40, True, J("1.5")]
    replacements += ["true", "2023-02-30"]

    def walk(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        if path:
            yield path
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "resourceType":
                    yield from walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, (*path, i))

    for path in list(walk(resource, ())):
        for value in replacements:
            obj = copy.deepcopy(resource)
            target = obj
            for p in path[:-1]:
                target = target[p]
            target[path[-1]] = copy.deepcopy(value)
            yield f"{path}={value!r}", obj


def _cross_check_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = [(str(c.id), c.values[0]) for c in BROKEN if isinstance(c.values[0], dict)]
    cases = [(label, obj) for label, obj in cases if obj.get("resourceType") in _R4B_COMPARABLE]
    for name, base in (("patient", PATIENT), ("observation", OBSERVATION), ("condition", CONDITION)):
        cases += [(f"{name}:{label}", obj) for label, obj in _mutations(base)]
    return cases


def test_at_least_as_strict_as_fhir_resources_r4b() -> None:
    cases = _cross_check_cases()
    rejected_by_r4b = 0
    missed: list[str] = []
    for label, obj in cases:
        if _r4b_rejects(obj):
            rejected_by_r4b += 1
            if not any(i.severity == "error" for i in validate_resource(obj)):
                missed.append(label)
    assert rejected_by_r4b > 100  # the mutations really exercise the R4B models
    assert missed == []


def test_stricter_than_r4b_where_the_brief_says_r4b_is_lax() -> None:
    # fhir.resources R4B accepts all of these; R4 JSON does not.
    lax: list[Callable[[], Any]] = [
        lambda: P(S("gender", "foo")),
        lambda: P(S("active", "true")),
        lambda: O(S(("valueQuantity", "value"), "1.5")),
        lambda: P(S("maritalStatus", {})),
    ]
    for make in lax:
        obj = make()
        assert not _r4b_rejects(obj)
        assert validate_resource(obj)


def test_ref1_local_reference_must_name_a_contained_resource() -> None:
    org = {"resourceType": "Organization", "id": "org", "name": "x"}
    loc = {"resourceType": "Location", "id": "loc", "managingOrganization": {"reference": "#org"}}
    ok = {"resourceType": "Patient", "contained": [org, loc], "managingOrganization": {"reference": "#org"},
          "generalPractitioner": [{"reference": "#loc"}]}
    assert [i for i in validate_resource(ok) if i.severity == "error"] == []
    bad = {"resourceType": "Patient", "managingOrganization": {"reference": "#nope"}}
    issues = validate_resource(bad)
    assert [(i.code, i.expression) for i in issues] == [("invariant", "Patient.managingOrganization.reference")]
    assert "ref-1" in issues[0].diagnostics
    # '#' alone refers to the container itself; a sibling reference inside a contained resource
    # that names nothing is still an error, reported where it stands.
    sibling = {"resourceType": "Patient", "managingOrganization": {"reference": "#org"},
               "contained": [{**org, "partOf": {"reference": "#ghost"}}]}
    assert [(i.code, i.expression) for i in validate_resource(sibling)] == [
        ("invariant", "Patient.contained[0].partOf.reference")
    ]
