"""The search-parameter registry: what it holds, what the extractor can index, and its source."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fhir_server.model.facts import get_facts
from fhir_server.search.registry import COLUMN_PARAMS, get_registry, load_raw

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")

# The US Core searches Inferno runs (US Core 3.1.1 and 6.1.0 test kits), per type.
INFERNO: dict[str, tuple[str, ...]] = {
    "Patient": (
        "_id",
        "identifier",
        "name",
        "birthdate",
        "gender",
        "family",
        "given",
        "death-date",
        "race",
        "ethnicity",
    ),
    "Observation": ("patient", "category", "code", "date", "status"),
    "Condition": ("patient", "category", "clinical-status", "code", "onset-date", "asserted-date"),
    "Encounter": (
        "patient",
        "_id",
        "identifier",
        "date",
        "type",
        "status",
        "class",
        "location",
        "discharge-disposition",
    ),
    "MedicationRequest": ("patient", "intent", "status", "encounter", "authoredon", "medication"),
    "AllergyIntolerance": ("patient", "clinical-status"),
    "CarePlan": ("patient", "category", "status", "date"),
    "CareTeam": ("patient", "status", "role"),
    "DiagnosticReport": ("patient", "category", "code", "date", "status"),
    "DocumentReference": ("patient", "_id", "category", "type", "date", "status", "period"),
    "Goal": ("patient", "lifecycle-status", "target-date", "description"),
    "Immunization": ("patient", "date", "status"),
    "MedicationDispense": ("patient", "status", "type"),
    "Procedure": ("patient", "date", "code", "status"),
    "ServiceRequest": ("patient", "category", "code", "authored", "status"),
    "Coverage": ("patient",),
    "Device": ("patient", "type"),
    "Location": ("name", "address", "address-city", "address-state", "address-postalcode"),
    "Organization": ("name", "address"),
    "Practitioner": ("name", "identifier"),
    "PractitionerRole": ("specialty", "practitioner"),
    "Provenance": ("target",),
    "QuestionnaireResponse": ("patient", "authored", "status", "questionnaire"),
    "RelatedPerson": ("patient", "name"),
    "Specimen": ("patient", "type"),
}

# What can't be indexed, and why; anything else unsupported is a regression.  Every R4 and US Core
# parameter of the served types is indexed now (Location near, the three-part composites, Bundle
# composition / message included).
EXPECTED_UNSUPPORTED: dict[tuple[str, str], str] = {}


def test_every_served_type_and_only_those() -> None:
    reg = get_registry()
    assert set(reg.resource_types) == set(get_facts().resource_types)


def test_counts_per_type_are_sane() -> None:
    reg = get_registry()
    counts = {t: len(reg.params_for(t)) for t in reg.resource_types}
    # R4 defines no parameter of their own for these; every other type has a few.
    bare = {t for t, n in counts.items() if n == len(COMMON)}
    assert bare == {
        "Binary",
        "BiologicallyDerivedProduct",
        "CatalogEntry",
        "ObservationDefinition",
        "OperationOutcome",
        "Parameters",
    }, bare
    assert counts["Patient"] == len(COMMON) + 22 + 4  # R4 + race, ethnicity, gender-identity, death-date
    assert counts["Observation"] == len(COMMON) + 38
    assert 2300 < sum(counts.values()) < 2600


@pytest.mark.parametrize("rtype", sorted(INFERNO))
def test_inferno_us_core_parameters_present_and_supported(rtype: str) -> None:
    reg = get_registry()
    for code in INFERNO[rtype]:
        p = reg.get(rtype, code)
        assert p is not None, f"{rtype}?{code} missing"
        assert p.supported, f"{rtype}?{code}: {p.reason}"
        assert p.base == rtype and p.code == code and p.expression


def test_common_parameters_on_every_type() -> None:
    reg = get_registry()
    for rtype in reg.resource_types:
        params = reg.params_for(rtype)
        for code in COMMON:
            assert params[code].supported, (rtype, code)
    assert reg.get("Patient", "_tag").type == "token"  # type: ignore[union-attr]
    assert reg.get("Patient", "_profile").type == "uri"  # type: ignore[union-attr]
    assert {"_id", "_lastUpdated"} == COLUMN_PARAMS
    for code in ("_text", "_content", "_query", "_list", "_has", "_type"):
        assert reg.get("Patient", code) is None


def test_unsupported_are_the_known_ones_with_reasons() -> None:
    reg = get_registry()
    found = {
        (t, code): p.reason
        for t in reg.resource_types
        for code, p in reg.params_for(t).items()
        if not p.supported
    }
    assert set(found) == set(EXPECTED_UNSUPPORTED), found
    for key, why in EXPECTED_UNSUPPORTED.items():
        assert why in (found[key] or ""), (key, found[key])
    total = sum(len(reg.params_for(t)) for t in reg.resource_types)
    supported = total - len(found)
    assert supported / total > 0.99


def test_parameters_beyond_plain_lookups() -> None:
    reg = get_registry()
    near = reg.get("Location", "near")
    assert near is not None and near.supported and near.type == "special"
    for code in ("composition", "message"):
        p = reg.get("Bundle", code)
        assert p is not None and p.supported and p.inline and p.type == "reference"
    assert not any(p.inline for t in reg.resource_types if t != "Bundle" for p in reg.params_for(t).values())
    # R4 4.0.1 swaps the expressions of this composite's components; the generator corrects it.
    rel = reg.get("DocumentReference", "relationship")
    assert rel is not None and [(c.code, c.type, c.expression) for c in rel.components] == [
        ("relatesto", "reference", "target"), ("relation", "token", "code"),
    ]
    coords = reg.get("MolecularSequence", "chromosome-variant-coordinate")
    assert coords is not None and [c.type for c in coords.components] == ["token", "number", "number"]


def test_split_union_keeps_only_the_base() -> None:
    reg = get_registry()
    # R4 "clinical-patient" is one SearchParameter over many bases.
    def expression(rtype: str, code: str) -> str:
        p = reg.get(rtype, code)
        assert p is not None
        return p.expression

    assert expression("Observation", "patient") == "Observation.subject.where(resolve() is Patient)"
    assert expression("AllergyIntolerance", "patient") == "AllergyIntolerance.patient"
    assert reg.get("Condition", "onset-date").expression == (  # type: ignore[union-attr]
        "Condition.onset.as(dateTime) | Condition.onset.as(Period)"
    )


def test_definitions_carry_targets_comparators_components_and_us_core() -> None:
    reg = get_registry()
    subject = reg.get("Task", "subject")
    assert subject is not None and "Patient" in subject.targets and "Parameters" not in subject.targets
    assert len(subject.targets) == len(get_facts().r4_resource_types) - 1  # "Any": stored as targets_all_but
    obs_subject = reg.get("Observation", "subject")
    assert obs_subject is not None and obs_subject.targets == ("Device", "Group", "Location", "Patient")
    gp = reg.get("Patient", "general-practitioner")
    assert gp is not None and gp.targets == ("Organization", "Practitioner", "PractitionerRole")
    date = reg.get("Observation", "date")
    assert date is not None and set(date.comparators) >= {"eq", "ge", "le", "sa", "eb", "ap"}
    cvq = reg.get("Observation", "component-code-value-quantity")
    assert cvq is not None and cvq.type == "composite"
    assert [(c.code, c.type, c.expression) for c in cvq.components] == [
        ("component-code", "token", "code"),
        ("component-value-quantity", "quantity", "value.as(Quantity)"),
    ]
    race = reg.get("Patient", "race")
    assert race is not None and race.url == "http://hl7.org/fhir/us/core/SearchParameter/us-core-race"
    asserted = reg.get("Condition", "asserted-date")
    assert asserted is not None and asserted.type == "date"
    # US Core 3.1.1's narrower expressions are noted beside the R4 ones that were kept.
    onset = reg.get("Condition", "onset-date")
    assert onset is not None and onset.url == "http://hl7.org/fhir/SearchParameter/Condition-onset-date"
    assert onset.also == ("http://hl7.org/fhir/us/core/SearchParameter/us-core-condition-onset-date",)
    loc = reg.get("Location", "name")
    assert loc is not None and loc.also == (
        "http://hl7.org/fhir/us/core/SearchParameter/us-core-location-name",
    )
    gender = reg.get("Patient", "gender")
    assert gender is not None and gender.also == ()  # same expression in R4 and US Core: one kept


def test_committed_json_is_what_the_script_makes(tmp_path: Path) -> None:
    if not (SHARED / "fhir-packages").is_dir():
        pytest.skip(f"{SHARED} is absent: the committed registry can't be regenerated")
    from scripts.gen_search_params import main

    out = tmp_path / "sp.json"
    assert main(["--shared", str(SHARED), "--out", str(out)]) == 0
    assert orjson.loads(out.read_bytes()) == load_raw()
