"""GET [base]/metadata: the CapabilityStatement (R4 capabilitystatement.html, http.html#capabilities)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.http.conftest import BASE, FHIR_NS, JSON_CT, XML_CT

NS = "{" + FHIR_NS + "}"
FACTS = json.loads((Path(__file__).resolve().parents[2] / "fhir_server" / "model" / "r4_facts.json").read_bytes())
SERVED = set(FACTS["resources"]) & set(FACTS["r4bModels"])
TYPE_INTERACTIONS = {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type"}


@pytest.fixture
def cs(client) -> dict:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(JSON_CT)
    return r.json()


def test_statement_header(cs) -> None:
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    assert cs["status"] in ("active", "draft")
    assert cs["date"]
    fmts = set(cs["format"])
    assert "json" in fmts or "application/fhir+json" in fmts
    assert "xml" in fmts or "application/fhir+xml" in fmts
    assert cs["implementation"]["url"] == BASE
    assert len(cs["rest"]) == 1 and cs["rest"][0]["mode"] == "server"


def test_every_served_type_is_listed_with_its_capabilities(cs) -> None:
    resources = cs["rest"][0]["resource"]
    types = [r["type"] for r in resources]
    assert len(types) == len(set(types))
    assert set(types) == SERVED
    for r in resources:
        assert {i["code"] for i in r["interaction"]} == TYPE_INTERACTIONS, r["type"]
        assert r["versioning"] == "versioned"
        assert r["readHistory"] is True
        assert r["updateCreate"] is True
        assert r["conditionalCreate"] is True
        assert r["conditionalRead"] == "full-support"
        assert r["conditionalUpdate"] is True
        assert r["conditionalDelete"] == "single"
        params = {p["name"]: p["type"] for p in r["searchParam"]}
        assert params["_id"] == "token" and params["_lastUpdated"] == "date", r["type"]
        # exactly the parameters the engine can evaluate for this type
        from fhir_server.search.registry import get_registry

        supported = {c: d.type for c, d in get_registry().params_for(r["type"]).items() if d.supported}
        assert params == supported, r["type"]


@pytest.mark.parametrize(
    "absent",
    ["MedicinalProduct", "SubstancePolymer", "EffectEvidenceSynthesis", "RiskEvidenceSynthesis",
     "SubscriptionTopic", "Citation", "ClinicalUseDefinition"],
)
def test_unserved_types_are_not_listed(cs, absent: str) -> None:
    assert absent not in {r["type"] for r in cs["rest"][0]["resource"]}


def test_supported_profiles_are_the_validators(cs) -> None:
    # Listed for the types the shipped US Core packages profile, and only those, as canonical|version.
    by_type = {r["type"]: r.get("supportedProfile", []) for r in cs["rest"][0]["resource"]}
    core = "http://hl7.org/fhir/us/core/StructureDefinition/"
    assert f"{core}us-core-patient|3.1.1" in by_type["Patient"] and f"{core}us-core-patient|6.1.0" in by_type["Patient"]
    assert any(p.startswith(f"{core}us-core-observation-lab|") for p in by_type["Observation"])
    assert by_type["Account"] == []
    assert all(p.startswith(("http://hl7.org/fhir/us/core/", "http://hl7.org/fhir/StructureDefinition/"))
               for ps in by_type.values() for p in ps)


def test_system_level(cs) -> None:
    rest = cs["rest"][0]
    codes = {i["code"] for i in rest.get("interaction", [])}
    assert "history-system" in codes and "search-system" in codes
    assert "batch" in codes and "transaction" in codes
    bulk = "http://hl7.org/fhir/uv/bulkdata"
    assert [(o["name"], o["definition"]) for o in rest["operation"]] == [("export", f"{bulk}/OperationDefinition/export")]
    assert cs["instantiates"] == [f"{bulk}/CapabilityStatement/bulk-data"]
    # Operations are declared on the types that serve them, and nowhere else.
    validate = ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate")
    assert all(validate in [(o["name"], o["definition"]) for o in r["operation"]] for r in rest["resource"])
    ops = {r["type"]: [(o["name"], o["definition"]) for o in r.get("operation", []) if o["name"] != "validate"]
           for r in rest["resource"]}
    assert ops["Patient"] == [("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything"),
                              ("export", f"{bulk}/OperationDefinition/patient-export")]
    assert ops["Encounter"] == [("everything", "http://hl7.org/fhir/OperationDefinition/Encounter-everything")]
    assert ops["Group"] == [("export", f"{bulk}/OperationDefinition/group-export")]
    assert {t for t, o in ops.items() if o} == {"Patient", "Encounter", "Group"}


def test_listed_types_really_work(client, cs) -> None:
    # A sample of listed types: read of an unknown id is 404 (the type is served), search is 200.
    for r in cs["rest"][0]["resource"][::10]:
        t = r["type"]
        assert client.get(f"/fhir/{t}").status_code == 200, t
        assert client.get(f"/fhir/{t}/no-such-id").status_code == 404, t
        assert client.get(f"/fhir/{t}/_history").status_code == 200, t


def test_statement_is_a_valid_resource(client, cs) -> None:
    # The server's own validator accepts its CapabilityStatement.
    r = client.post("/fhir/CapabilityStatement", json={k: v for k, v in cs.items() if k not in ("id", "meta")})
    assert r.status_code == 201, r.text


def test_statement_in_xml(client) -> None:
    r = client.get("/fhir/metadata", params={"_format": "xml"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(XML_CT)
    root = ET.fromstring(r.content)
    assert root.tag == NS + "CapabilityStatement"
    assert root.find(NS + "fhirVersion").get("value") == "4.0.1"
    assert root.find(NS + "kind").get("value") == "instance"
    types = {e.find(NS + "type").get("value") for e in root.findall(f"{NS}rest/{NS}resource")}
    assert types == SERVED
    patient = next(e for e in root.findall(f"{NS}rest/{NS}resource") if e.find(NS + "type").get("value") == "Patient")
    assert {i.find(NS + "code").get("value") for i in patient.findall(NS + "interaction")} == TYPE_INTERACTIONS
    assert patient.find(NS + "conditionalCreate").get("value") == "true"
    assert patient.find(NS + "conditionalUpdate").get("value") == "true"
    assert patient.find(NS + "conditionalDelete").get("value") == "single"
    names = {p.find(NS + "name").get("value") for p in patient.findall(NS + "searchParam")}
    assert {"_id", "_lastUpdated", "name", "birthdate", "identifier", "gender", "family", "race"} <= names


def test_statement_via_accept(client) -> None:
    r = client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert ET.fromstring(r.content).tag == NS + "CapabilityStatement"


def test_statement_is_stable(client, cs) -> None:
    again = client.get("/fhir/metadata").json()
    assert again["rest"] == cs["rest"]
