"""What the three kick-off forms export, compared with expectations computed here, independently of
the server: patient compartments from the R4 CompartmentDefinition and search-parameter
expressions (the evaluator of tests/http/test_everything.py), over what the test stored.

Data (``world``): the two smallest Synthea patients a and b, a hand-made patient c with its own data,
an Observation of a performed by c, an Observation of nobody, shared Medication/Organization, and
Groups G = {a, c} and H = {b}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from tests.http.conftest import BASE
from tests.http.test_everything import Compartment

from .conftest import World
from .helpers import Key, diff, export, kickoff, params_resource, read_ndjson, wait_manifest


def compartment(world: World, *patients: Key) -> set[Key]:
    comp = Compartment("Patient")
    out: set[Key] = set()
    for p in patients:
        out |= comp.members(p, world.stored)
    return out


def same_content(found: dict[Key, dict[str, Any]], world: World) -> None:
    for key, res in found.items():
        assert res == world.stored[key], f"{key} differs from the stored resource"


def test_world_is_not_vacuous(world: World) -> None:
    a, b, c = world.a, world.b, world.c
    ca, cb, cc = compartment(world, a), compartment(world, b), compartment(world, c)
    assert {"Observation", "Encounter", "Claim"} <= {k[0] for k in ca}
    assert world.group in ca and world.group in cc and world.other_group in cb
    assert ca & cc - {world.group}, "the Observation of a performed by c is in both"
    assert not ca & cb
    outside = set(world.stored) - ca - cb - cc
    assert {"Organization", "Medication", "Observation"} <= {k[0] for k in outside}, outside


def test_system_export_is_everything(world: World) -> None:
    manifest, found = export(world.client, "/fhir/$export", base=BASE)
    assert set(found) == set(world.stored), diff(set(found), set(world.stored))
    same_content(found, world)
    # One or more files per type; a file holds one type; the counts add up per type.
    per_type: dict[str, int] = {}
    for item in manifest["output"]:
        per_type[item["type"]] = per_type.get(item["type"], 0) + item["count"]
    assert per_type == {t: sum(1 for k in world.stored if k[0] == t) for t in {k[0] for k in world.stored}}
    assert manifest["error"] == []


def test_patient_export_is_all_patient_compartments(world: World) -> None:
    expected = compartment(world, *world.patients)
    assert len(world.patients) == 3
    _, found = export(world.client, "/fhir/Patient/$export", base=BASE)
    assert set(found) == expected, diff(set(found), expected)
    same_content(found, world)


def test_group_export_is_the_members_compartments(world: World) -> None:
    expected = compartment(world, world.a, world.c) | {world.group}
    _, found = export(world.client, f"/fhir/Group/{world.group[1]}/$export", base=BASE,
                      tolerate=frozenset({world.group}))
    assert set(found) == expected, diff(set(found), expected)
    same_content(found, world)
    assert world.b not in found and world.other_group not in found


def test_group_export_of_the_other_group(world: World) -> None:
    expected = compartment(world, world.b) | {world.other_group}
    _, found = export(world.client, f"/fhir/Group/{world.other_group[1]}/$export", base=BASE,
                      tolerate=frozenset({world.other_group}))
    assert set(found) == expected, diff(set(found), expected)


def test_post_patient_export_with_patient_parameters(world: World) -> None:
    body = params_resource(("patient", "valueReference", {"reference": f"Patient/{world.c[1]}"}),
                           ("_type", "valueString", "Patient,Observation,Condition"))
    _, found = export(world.client, "/fhir/Patient/$export", parameters=body, base=BASE)
    expected = {k for k in compartment(world, world.c) if k[0] in ("Patient", "Observation", "Condition")}
    assert set(found) == expected, diff(set(found), expected)
    # Two patients by two parameters.
    body = params_resource(("patient", "valueReference", {"reference": f"Patient/{world.a[1]}"}),
                           ("patient", "valueReference", {"reference": f"Patient/{world.b[1]}"}))
    _, found = export(world.client, "/fhir/Patient/$export", parameters=body, base=BASE)
    expected = compartment(world, world.a, world.b)
    assert set(found) == expected, diff(set(found), expected)


def test_post_group_export_restricted_to_patients(world: World) -> None:
    body = params_resource(("patient", "valueReference", {"reference": f"Patient/{world.c[1]}"}))
    _, found = export(world.client, f"/fhir/Group/{world.group[1]}/$export", parameters=body, base=BASE,
                      tolerate=frozenset({world.group}))
    expected = compartment(world, world.c) | {world.group}
    assert set(found) == expected, diff(set(found), expected)
    # A patient outside the Group adds nothing of its own.
    body = params_resource(("patient", "valueReference", {"reference": f"Patient/{world.b[1]}"}))
    _, found = export(world.client, f"/fhir/Group/{world.group[1]}/$export", parameters=body, base=BASE,
                      tolerate=frozenset({world.group}))
    assert not set(found) & compartment(world, world.b), sorted(set(found))[:5]
    assert set(found) <= {world.group}


def test_post_system_export_with_parameters(world: World) -> None:
    body = params_resource(("_type", "valueString", "Medication,Organization"),
                           ("_outputFormat", "valueString", "application/fhir+ndjson"))
    _, found = export(world.client, "/fhir/$export", parameters=body, base=BASE)
    expected = {k for k in world.stored if k[0] in ("Medication", "Organization")}
    assert set(found) == expected, diff(set(found), expected)


def test_type_restricts_each_form(world: World) -> None:
    for url, universe in (("/fhir/$export", set(world.stored)),
                          ("/fhir/Patient/$export", compartment(world, *world.patients)),
                          (f"/fhir/Group/{world.group[1]}/$export",
                           compartment(world, world.a, world.c) | {world.group})):
        _, found = export(world.client, url, params={"_type": "Condition,Patient"}, base=BASE)
        expected = {k for k in universe if k[0] in ("Condition", "Patient")}
        assert {k[0] for k in expected} == {"Condition", "Patient"}
        assert set(found) == expected, (url, diff(set(found), expected))


def test_type_filter(world: World) -> None:
    def has_category(res: dict[str, Any], code: str) -> bool:
        return any(c.get("code") == code for cat in res.get("category", []) for c in cat.get("coding", []))

    obs = {k: r for k, r in world.stored.items() if k[0] == "Observation"}
    lab = {k for k, r in obs.items() if has_category(r, "laboratory")}
    vital = {k for k, r in obs.items() if has_category(r, "vital-signs")}
    assert lab and vital and set(obs) - lab - vital
    # One filter; with _type naming only the filtered type.
    _, found = export(world.client, "/fhir/$export", base=BASE,
                      params={"_type": "Observation", "_typeFilter": "Observation?category=laboratory"})
    assert set(found) == lab, diff(set(found), lab)
    # Two filters of one type are ORed; another type without a filter comes whole.
    _, found = export(world.client, "/fhir/$export", base=BASE,
                      params=[("_type", "Observation,Patient"),
                              ("_typeFilter", "Observation?category=laboratory"),
                              ("_typeFilter", "Observation?category=vital-signs")])
    expected = lab | vital | {k for k in world.stored if k[0] == "Patient"}
    assert set(found) == expected, diff(set(found), expected)
    # A token with its system, given as is and percent-encoded inside the (once more encoded) value.
    system = "http://terminology.hl7.org/CodeSystem/observation-category"
    for query in (f"category={system}|laboratory", f"category={quote(system, safe='')}%7Claboratory"):
        _, found = export(world.client, "/fhir/$export", base=BASE,
                          params={"_type": "Observation", "_typeFilter": f"Observation?{query}"})
        assert set(found) == lab, (query, diff(set(found), lab))
    # A filter with two parameters ANDs them; combined with a patient export.
    females = {k for k, r in world.stored.items() if k[0] == "Patient" and r.get("gender") == "female"}
    assert females and females != {k for k in world.stored if k[0] == "Patient"}
    _, found = export(world.client, "/fhir/Patient/$export", base=BASE,
                      params={"_type": "Patient", "_typeFilter": "Patient?gender=female&_id=" + world.c[1]})
    assert set(found) == {world.c}


def test_type_filter_without_type_filters_only_its_type(world: World) -> None:
    _, found = export(world.client, f"/fhir/Group/{world.group[1]}/$export", base=BASE,
                      params={"_typeFilter": "Observation?category=vital-signs"}, tolerate=frozenset({world.group}))
    members = compartment(world, world.a, world.c) | {world.group}
    expected = {k for k in members if k[0] != "Observation"} | {
        k for k in members if k[0] == "Observation"
        and any(c.get("code") == "vital-signs" for cat in world.stored[k].get("category", [])
                for c in cat.get("coding", []))}
    assert set(found) == expected, diff(set(found), expected)


def test_output_format_spellings(world: World) -> None:
    for fmt in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        _, found = export(world.client, "/fhir/$export", base=BASE, params={"_outputFormat": fmt, "_type": "Group"})
        assert set(found) == {world.group, world.other_group}, fmt


def test_group_export_lists_the_group_once(world: World) -> None:
    """Without _type, Group/[id]/$export writes the Group in two files (manifest lists Group twice)."""
    _, found = export(world.client, f"/fhir/Group/{world.group[1]}/$export", base=BASE,
                      params={"_typeFilter": "Observation?_id=none"})
    assert world.group in found


def test_group_export_manifest_lists_each_type_once_with_type(world: World) -> None:
    manifest, found = export(world.client, f"/fhir/Group/{world.group[1]}/$export", base=BASE,
                             params={"_type": "Group,Patient"})
    assert set(found) == {world.group, world.a, world.c}
    assert sorted(i["type"] for i in manifest["output"]) == ["Group", "Patient"]


@pytest.mark.parametrize("accept", ["application/fhir+ndjson", "application/ndjson"])
def test_file_accept_header(world: World, accept: str) -> None:
    manifest, _ = export(world.client, "/fhir/$export", base=BASE, params={"_type": "Group"})
    url = manifest["output"][0]["url"]
    assert read_ndjson(world.client, url, headers={"Accept": accept}, expected_type="Group")


def test_patient_parameter_as_absolute_reference(world: World) -> None:
    body = params_resource(("patient", "valueReference", {"reference": f"{BASE}/Patient/{world.c[1]}"}),
                           ("_type", "valueString", "Patient"))
    _, found = export(world.client, "/fhir/Patient/$export", parameters=body, base=BASE)
    assert set(found) == {world.c}


def test_manifest_request_round_trips(world: World) -> None:
    sent = [("_type", "Patient"), ("_typeFilter", f"Patient?gender=female&_id={world.c[1]}")]
    status_url = kickoff(world.client, "/fhir/Patient/$export", params=sent, base=BASE)
    manifest = wait_manifest(world.client, status_url)
    parts = urlsplit(manifest["request"])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{BASE}/Patient/$export"
    assert parse_qsl(parts.query) == sent
