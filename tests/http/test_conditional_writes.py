"""Conditional update and conditional delete (R4 http.html#cond-update, http.html#cond-delete).

PUT [type]?criteria: no match creates (the body's id, if any, or a server id), one match is
updated, several are refused with 412.  DELETE [type]?criteria: no match changes nothing (200), one
match is deleted, several are refused with 412 unless the server is set to delete them all.
Criteria the server cannot evaluate, or none at all, are refused: they must never match everything.
"""

from __future__ import annotations

import re

import pytest

from tests.http.conftest import BASE, JSON_CT, XML_CT, assert_outcome, create, patient, put

SYS = "http://hospital.example/mrn"
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def mrn(value: str) -> list[dict[str, str]]:
    return [{"system": SYS, "value": value}]


def cond_put(client, body: dict, query: str, **kwargs):  # noqa: ANN001, ANN201
    return client.put(f"/fhir/{body['resourceType']}?{query}", json=body, **kwargs)


def cond_delete(client, rtype: str, query: str, **kwargs):  # noqa: ANN001, ANN201
    return client.delete(f"/fhir/{rtype}?{query}" if query else f"/fhir/{rtype}", **kwargs)


def count(client, rtype: str = "Patient", **params: str) -> int:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def read(client, id: str, rtype: str = "Patient") -> dict:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}/{id}")
    assert r.status_code == 200, r.text
    return r.json()


def ids_matching(client, **params: str) -> list[str]:  # noqa: ANN001
    r = client.get("/fhir/Patient", params={**params, "_count": "100"})
    assert r.status_code == 200
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []))


# -- conditional update: no match ----------------------------------------------------------------


def test_no_match_without_id_creates_with_a_server_id(client) -> None:
    create(client, patient(identifier=mrn("other")))
    r = cond_put(client, patient(identifier=mrn("123"), gender="female"), f"identifier={SYS}|123")
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith(JSON_CT)
    body = r.json()
    pid = body["id"]
    assert ID_RE.match(pid)
    assert body["gender"] == "female" and body["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"{BASE}/Patient/{pid}/_history/1"
    assert read(client, pid) == body
    assert ids_matching(client, identifier=f"{SYS}|123") == [pid]
    assert count(client) == 2


def test_no_match_with_id_creates_with_that_id(client) -> None:
    r = cond_put(client, patient(id="chosen-1", identifier=mrn("124")), f"identifier={SYS}|124")
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "chosen-1"
    assert r.headers["location"] == f"{BASE}/Patient/chosen-1/_history/1"
    assert read(client, "chosen-1")["identifier"] == mrn("124")


def test_deleted_resources_do_not_match(client) -> None:
    gone = create(client, patient(identifier=mrn("125")))
    assert client.delete(f"/fhir/Patient/{gone['id']}").status_code == 200
    r = cond_put(client, patient(identifier=mrn("125"), gender="male"), f"identifier={SYS}|125")
    assert r.status_code == 201, r.text
    assert r.json()["gender"] == "male"
    assert count(client, identifier=f"{SYS}|125") == 1


def test_other_types_do_not_match(client) -> None:
    create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                    "identifier": mrn("126")})
    r = cond_put(client, patient(identifier=mrn("126")), f"identifier={SYS}|126")
    assert r.status_code == 201, r.text
    assert count(client, "Observation") == 1 and count(client) == 1


# -- conditional update: one match ---------------------------------------------------------------


def test_one_match_is_updated(client) -> None:
    existing = create(client, patient(identifier=mrn("200"), gender="male", birthDate="1970-01-01"))
    create(client, patient(identifier=mrn("201")))
    r = cond_put(client, patient(identifier=mrn("200"), gender="female"), f"identifier={SYS}|200")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == existing["id"]
    assert body["meta"]["versionId"] == "2"
    assert body["gender"] == "female" and "birthDate" not in body  # replaced, not merged
    assert r.headers["etag"] == 'W/"2"'
    assert read(client, existing["id"]) == body
    v1 = client.get(f"/fhir/Patient/{existing['id']}/_history/1").json()
    assert v1["gender"] == "male" and v1["birthDate"] == "1970-01-01"
    assert count(client) == 2
    # once more: version 3
    r = cond_put(client, patient(identifier=mrn("200"), gender="other"), f"identifier={SYS}|200")
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "3" and r.json()["id"] == existing["id"]


def test_one_match_with_the_same_id_in_the_body(client) -> None:
    existing = create(client, patient(identifier=mrn("202")))
    r = cond_put(client, {**existing, "gender": "male"}, f"identifier={SYS}|202")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == existing["id"] and r.json()["meta"]["versionId"] == "2"


def test_one_match_with_a_different_id_in_the_body_is_400(client) -> None:
    existing = create(client, patient(identifier=mrn("203"), gender="male"))
    r = cond_put(client, patient(id="someone-else", identifier=mrn("203"), gender="female"), f"identifier={SYS}|203")
    assert_outcome(r, 400)
    current = read(client, existing["id"])
    assert current["gender"] == "male" and current["meta"]["versionId"] == "1"
    assert_outcome(client.get("/fhir/Patient/someone-else"), 404)


def test_criteria_are_combined_with_and(client) -> None:
    a = create(client, patient(identifier=mrn("300"), name=[{"family": "Alpha"}]))
    b = create(client, patient(identifier=mrn("300"), name=[{"family": "Beta"}]))
    r = cond_put(client, patient(identifier=mrn("300"), name=[{"family": "Beta"}], gender="female"),
                 f"identifier={SYS}|300&family=Beta")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == b["id"]
    assert read(client, a["id"])["meta"]["versionId"] == "1"
    assert read(client, b["id"])["gender"] == "female"


def test_match_by_id(client) -> None:
    a = create(client, patient(gender="male"))
    r = cond_put(client, patient(gender="female"), f"_id={a['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == a["id"] and r.json()["meta"]["versionId"] == "2"


# -- conditional update: several matches, bad criteria ---------------------------------------------


def test_two_matches_is_412(client) -> None:
    a = create(client, patient(identifier=mrn("400"), gender="male"))
    b = create(client, patient(identifier=mrn("400"), gender="male"))
    r = cond_put(client, patient(identifier=mrn("400"), gender="female"), f"identifier={SYS}|400")
    assert_outcome(r, 412)
    for p in (a, b):
        assert read(client, p["id"]) == p
    assert count(client) == 2


@pytest.mark.parametrize("query", ["", "_format=json", "_count=1", "identifier="])
def test_no_criteria_is_400(client, query: str) -> None:
    only = create(client, patient(gender="male"))
    r = client.put(f"/fhir/Patient?{query}" if query else "/fhir/Patient", json=patient(gender="female"))
    assert_outcome(r, 400)
    assert read(client, only["id"]) == only
    assert count(client) == 1


@pytest.mark.parametrize("query", ["foo=bar", "identifier:frobnicate=x", f"identifier={SYS}|1&unknown-param=2"])
def test_unknown_criteria_are_400(client, query: str) -> None:
    only = create(client, patient(identifier=mrn("1"), gender="male"))
    r = cond_put(client, patient(gender="female"), query)
    assert_outcome(r, 400)
    assert read(client, only["id"]) == only
    assert count(client) == 1


def test_invalid_body_is_400_and_changes_nothing(client) -> None:
    existing = create(client, patient(identifier=mrn("500"), gender="male"))
    r = cond_put(client, patient(identifier=mrn("500"), gender="foo"), f"identifier={SYS}|500")
    issues = assert_outcome(r, 400)
    assert any("Patient.gender" in e for i in issues for e in i.get("expression", [])), issues
    assert read(client, existing["id"]) == existing
    r = client.put(f"/fhir/Patient?identifier={SYS}|500", json={"resourceType": "Observation", "status": "final",
                                                              "code": {"text": "x"}})
    assert_outcome(r, 400)
    assert read(client, existing["id"]) == existing
    assert count(client, "Observation") == 0


def test_prefer_minimal_and_outcome(client) -> None:
    existing = create(client, patient(identifier=mrn("600")))
    r = cond_put(client, patient(identifier=mrn("600"), gender="male"), f"identifier={SYS}|600",
                 headers={"Prefer": "return=minimal"})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["etag"] == 'W/"2"'
    assert r.headers["location"] == f"{BASE}/Patient/{existing['id']}/_history/2"
    r = cond_put(client, patient(identifier=mrn("600"), gender="female"), f"identifier={SYS}|600",
                 headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 200
    assert r.json()["resourceType"] == "OperationOutcome"
    assert read(client, existing["id"])["gender"] == "female"


def test_conditional_update_from_xml(client) -> None:
    existing = create(client, patient(identifier=mrn("700"), gender="male"))
    xml = (f'<Patient xmlns="http://hl7.org/fhir"><identifier><system value="{SYS}"/><value value="700"/>'
           '</identifier><gender value="female"/></Patient>').encode()
    r = client.put(f"/fhir/Patient?identifier={SYS}|700", content=xml, headers={"Content-Type": XML_CT})
    assert r.status_code == 200, r.text
    assert read(client, existing["id"])["gender"] == "female"


def test_plain_update_still_works(client) -> None:
    # The instance-level PUT is untouched by the conditional form.
    r = put(client, patient(id="plain-1", gender="male"))
    assert r.status_code == 201
    r = put(client, patient(id="plain-1", gender="female"))
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"


# -- conditional delete --------------------------------------------------------------------------


def test_delete_no_match_is_200_and_changes_nothing(client) -> None:
    other = create(client, patient(identifier=mrn("other")))
    r = cond_delete(client, "Patient", f"identifier={SYS}|nobody")
    assert r.status_code == 200, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert read(client, other["id"]) == other


def test_delete_one_match(client) -> None:
    target = create(client, patient(identifier=mrn("d1")))
    other = create(client, patient(identifier=mrn("d2")))
    obs = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "identifier": mrn("d1")})
    r = cond_delete(client, "Patient", f"identifier={SYS}|d1")
    assert r.status_code == 200, r.text
    assert_outcome(client.get(f"/fhir/Patient/{target['id']}"), 410)
    assert read(client, other["id"]) == other
    assert read(client, obs["id"], "Observation") == obs  # same identifier, other type
    assert count(client) == 1
    # The deletion is a new version in the history.
    hist = client.get(f"/fhir/Patient/{target['id']}/_history").json()
    assert len(hist["entry"]) == 2 and hist["entry"][0]["request"]["method"] == "DELETE"


def test_delete_two_matches_is_412_by_default(client) -> None:
    a = create(client, patient(identifier=mrn("d3")))
    b = create(client, patient(identifier=mrn("d3")))
    assert_outcome(cond_delete(client, "Patient", f"identifier={SYS}|d3"), 412)
    assert read(client, a["id"]) == a and read(client, b["id"]) == b


def test_deleted_resources_are_not_matches(client) -> None:
    a = create(client, patient(identifier=mrn("d4")))
    b = create(client, patient(identifier=mrn("d4")))
    assert client.delete(f"/fhir/Patient/{a['id']}").status_code == 200
    r = cond_delete(client, "Patient", f"identifier={SYS}|d4")
    assert r.status_code == 200, r.text
    assert_outcome(client.get(f"/fhir/Patient/{b['id']}"), 410)


def test_delete_multiple_when_configured(make_client) -> None:
    client = make_client(conditional_delete="multiple")
    matches = [create(client, patient(identifier=mrn("d5"))) for _ in range(3)]
    keep = create(client, patient(identifier=mrn("d6")))
    r = cond_delete(client, "Patient", f"identifier={SYS}|d5")
    assert r.status_code == 200, r.text
    for m in matches:
        assert_outcome(client.get(f"/fhir/Patient/{m['id']}"), 410)
    assert read(client, keep["id"]) == keep
    assert count(client) == 1
    # a single match and no match still work in this mode
    r = cond_delete(client, "Patient", f"identifier={SYS}|d6")
    assert r.status_code == 200
    assert_outcome(client.get(f"/fhir/Patient/{keep['id']}"), 410)
    assert cond_delete(client, "Patient", f"identifier={SYS}|d6").status_code == 200


def test_delete_multiple_is_capped(make_client) -> None:
    client = make_client(conditional_delete="multiple", conditional_delete_max=2)
    matches = [create(client, patient(identifier=mrn("d7"))) for _ in range(3)]
    r = cond_delete(client, "Patient", f"identifier={SYS}|d7")
    assert r.status_code in (400, 412, 413), r.text
    assert_outcome(r, r.status_code)
    for m in matches:
        assert read(client, m["id"]) == m


@pytest.mark.parametrize("mode", ["single", "multiple"])
@pytest.mark.parametrize("query", ["", "_format=json", "_count=5"])
def test_delete_without_criteria_deletes_nothing(make_client, mode: str, query: str) -> None:
    client = make_client(conditional_delete=mode)
    a = create(client, patient())
    r = cond_delete(client, "Patient", query)
    assert 400 <= r.status_code < 500, r.text
    assert_outcome(r, r.status_code)
    assert read(client, a["id"]) == a


@pytest.mark.parametrize("mode", ["single", "multiple"])
@pytest.mark.parametrize("query", ["foo=bar", "identifier:frobnicate=x", f"identifier={SYS}|d8&unknown-param=1"])
def test_delete_with_unknown_criteria_is_400(make_client, mode: str, query: str) -> None:
    client = make_client(conditional_delete=mode)
    a = create(client, patient(identifier=mrn("d8")))
    assert_outcome(cond_delete(client, "Patient", query), 400)
    assert read(client, a["id"]) == a


def test_recreate_after_conditional_delete(client) -> None:
    create(client, patient(identifier=mrn("d9")))
    assert cond_delete(client, "Patient", f"identifier={SYS}|d9").status_code == 200
    r = cond_put(client, patient(identifier=mrn("d9"), gender="male"), f"identifier={SYS}|d9")
    assert r.status_code == 201, r.text
    assert count(client, identifier=f"{SYS}|d9") == 1


# -- CapabilityStatement -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, "single", "multiple"])
def test_capability_statement(make_client, mode: str | None) -> None:
    client = make_client() if mode is None else make_client(conditional_delete=mode)
    cs = client.get("/fhir/metadata").json()
    resources = cs["rest"][0]["resource"]
    assert resources
    for res in resources:
        assert res["conditionalUpdate"] is True, res["type"]
        assert res["conditionalDelete"] == (mode or "single"), res["type"]
