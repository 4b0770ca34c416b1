"""Value set expansion from package content, syntax-only systems, and scoped resolution."""

from __future__ import annotations

import pytest

from fhir_server.validation.terminology import SYNTAX_ONLY, Terminology, syntax_ok
from fhir_server.validation.validator import ProfileValidator

UC = "http://hl7.org/fhir/us/core/ValueSet/"
CDCREC = "urn:oid:2.16.840.1.113883.6.238"
EX = "http://example.org/"


def _terminology() -> Terminology:
    t = Terminology()
    t.add_code_system_resource({
        "resourceType": "CodeSystem", "url": EX + "cs", "content": "complete",
        "concept": [{"code": "A", "concept": [{"code": "A1"}, {"code": "A2", "concept": [{"code": "A2x"}]}]},
                    {"code": "B"}],
    })  # fmt: skip
    t.add_value_set_resource({"url": EX + "all", "compose": {"include": [{"system": EX + "cs"}]}})
    t.add_value_set_resource({"url": EX + "isa", "compose": {"include": [{"system": EX + "cs", "filter": [
        {"property": "concept", "op": "is-a", "value": "A2"}]}]}})  # fmt: skip
    t.add_value_set_resource({"url": EX + "desc", "compose": {"include": [{"system": EX + "cs", "filter": [
        {"property": "concept", "op": "descendent-of", "value": "A"}]}], "exclude": [
        {"system": EX + "cs", "concept": [{"code": "A1"}]}]}})  # fmt: skip
    t.add_value_set_resource(
        {
            "url": EX + "import",
            "compose": {"include": [{"valueSet": [EX + "isa"]}, {"system": "http://loinc.org"}]},
        }
    )
    t.add_value_set_resource({"url": EX + "vsac", "compose": {"include": [{"valueSet": [EX + "missing"]}]}})
    return t


def test_whole_systems_filters_imports_and_excludes() -> None:
    t = _terminology()
    assert [t.member(EX + "all", EX + "cs", c) for c in ("A", "A2x", "C")] == [True, True, False]
    assert [t.member(EX + "isa", EX + "cs", c) for c in ("A2", "A2x", "A", "B")] == [True, True, False, False]
    assert [t.member(EX + "desc", EX + "cs", c) for c in ("A", "A1", "A2", "A2x")] == [
        False,
        False,
        True,
        True,
    ]
    assert t.member(EX + "import", EX + "cs", "A2x") is True
    assert t.member(EX + "import", "http://loinc.org", "8302-2") is True  # syntax only
    assert t.member(EX + "import", "http://loinc.org", "8302") is False
    assert t.member(EX + "import", "http://snomed.info/sct", "38341003") is False  # not included


def test_unresolvable_parts_are_unknown_unless_the_code_system_says_no() -> None:
    t = _terminology()
    assert t.member(EX + "vsac", EX + "elsewhere", "x") is None
    assert t.member(EX + "vsac", EX + "cs", "A") is None  # a real code: the missing value set may hold it
    assert t.member(EX + "vsac", EX + "cs", "nope") is False  # not a code of that system at all
    assert t.member(EX + "no-such-vs", EX + "cs", "nope") is False
    assert t.member(EX + "no-such-vs", EX + "elsewhere", "x") is None


@pytest.mark.parametrize(
    ("system", "good", "bad"),
    [
        ("http://loinc.org", ["8302-2", "LP12345-6"], ["8302", "x-1"]),
        ("http://snomed.info/sct", ["38341003", "444814009"], ["38341004", "12"]),  # Verhoeff check digit
        ("http://www.nlm.nih.gov/research/umls/rxnorm", ["314076"], ["31407a"]),
        ("http://hl7.org/fhir/sid/cvx", ["08", "140"], ["1400"]),
        ("http://hl7.org/fhir/sid/icd-10-cm", ["E11.9", "I10"], ["11.9"]),
        ("http://unitsofmeasure.org", ["mm[Hg]", "kg/m2"], ["mm Hg"]),
    ],
)
def test_syntax_only_systems(system: str, good: list[str], bad: list[str]) -> None:
    assert system in SYNTAX_ONLY
    assert all(syntax_ok(system, c) for c in good)
    assert not any(syntax_ok(system, c) for c in bad)


def test_us_core_value_sets_resolve_within_their_own_package(shipped: ProfileValidator) -> None:
    # US Core 3.1.1 enumerates the OMB categories from cdcrec; 6.1.0 imports VSAC value sets that no
    # package holds, so there only the cdcrec code system can refuse a code.
    term = shipped.conformance.terminology
    assert term.member(UC + "omb-race-category", CDCREC, "2106-3", "hl7.fhir.us.core#3.1.1") is True
    assert term.member(UC + "omb-race-category", CDCREC, "2108-9", "hl7.fhir.us.core#3.1.1") is False
    assert term.member(UC + "omb-race-category", CDCREC, "2108-9", "hl7.fhir.us.core#6.1.0") is None
    assert term.member(UC + "omb-race-category", CDCREC, "9999-9", "hl7.fhir.us.core#6.1.0") is False
    assert term.member(UC + "detailed-race", CDCREC, "2108-9", "hl7.fhir.us.core#3.1.1") is True
    assert term.member(UC + "birthsex", None, "M", "hl7.fhir.us.core#3.1.1") is True


def test_member_of_accepts_codes_codings_and_concepts(shipped: ProfileValidator) -> None:
    vs = "http://hl7.org/fhir/us/core/ValueSet/us-core-condition-category|3.1.1"
    cc = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "problem-list-item",
            }
        ]
    }
    assert shipped.member_of(vs, cc) is True
    assert shipped.member_of(vs, cc["coding"][0] | {"code": "nope"}) is False
