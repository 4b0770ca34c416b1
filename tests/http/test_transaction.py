"""Transactions: POST [base] with a Bundle of type "transaction" (R4 http.html#transaction, bundle.html).

What is checked beyond status codes: the transaction-response Bundle (one entry per request entry,
in request order, status / location / etag / lastModified / fullUrl), the rewriting of urn:uuid /
urn:oid references to the server's new ids (everywhere a Reference can be), conditional
references, ifNoneExist / ifMatch / ifNoneMatch, the processing order DELETE, POST, PUT/PATCH,
GET, and atomicity: a failing entry leaves nothing of the bundle behind.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any

import pytest

from tests.http.conftest import (
    BASE,
    FHIR_NS,
    JSON_CT,
    SYNTHEA_SMALL,
    XML_CT,
    assert_outcome,
    create,
    patient,
    put,
)

NS = "{" + FHIR_NS + "}"
LOCATION_RE = re.compile(r"^(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})/_history/(?P<vid>[0-9]+)$")
INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
SYS = "http://hospital.example/mrn"


# -- helpers -------------------------------------------------------------------------------------


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def bundle(*entries: dict[str, Any], type_: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": type_, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, *, if_none_exist: str | None = None) -> dict:
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist is not None:
        request["ifNoneExist"] = if_none_exist
    entry: dict[str, Any] = {"resource": resource, "request": request}
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def put_entry(resource: dict[str, Any], url: str | None = None, *, full_url: str | None = None,
              if_match: str | None = None) -> dict:
    request: dict[str, Any] = {"method": "PUT", "url": url or f"{resource['resourceType']}/{resource['id']}"}
    if if_match is not None:
        request["ifMatch"] = if_match
    entry: dict[str, Any] = {"resource": resource, "request": request}
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def delete_entry(url: str, *, if_match: str | None = None) -> dict:
    request = {"method": "DELETE", "url": url}
    if if_match is not None:
        request["ifMatch"] = if_match
    return {"request": request}


def get_entry(url: str, *, if_none_match: str | None = None) -> dict:
    request = {"method": "GET", "url": url}
    if if_none_match is not None:
        request["ifNoneMatch"] = if_none_match
    return {"request": request}


def patch_entry(url: str, resource: dict[str, Any]) -> dict:
    return {"resource": resource, "request": {"method": "PATCH", "url": url}}


def fhirpath_patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": k, **v} for k, v in op.items()]} for op in operations]}


def json_patch_binary(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(ops).encode()).decode()}


def send(client, body: dict[str, Any], *, prefer: str | None = None):  # noqa: ANN001, ANN201
    headers = {"Content-Type": JSON_CT}
    if prefer is not None:
        headers["Prefer"] = prefer
    return client.post("/fhir", content=json.dumps(body), headers=headers)


def transact(client, *entries: dict[str, Any], prefer: str | None = None) -> list[dict[str, Any]]:  # noqa: ANN001
    """Send a transaction that must succeed; return the response entries (checked to match 1:1)."""
    r = send(client, bundle(*entries), prefer=prefer)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(JSON_CT)
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response", body
    assert len(body.get("entry", [])) == len(entries), body
    for e in body["entry"]:
        assert re.match(r"^\d{3}( |$)", e["response"]["status"]), e
    return body["entry"]


def code(entry: dict[str, Any]) -> int:
    return int(entry["response"]["status"][:3])


def check_write(entry: dict[str, Any], rtype: str, status: int, *, version: int | None = None) -> str:
    """A write's response entry: status, relative location, etag, lastModified, absolute fullUrl.
    Returns the id."""
    resp = entry["response"]
    assert resp["status"].startswith(str(status)), resp
    m = LOCATION_RE.match(resp["location"])
    assert m, resp["location"]
    assert m["type"] == rtype, resp
    if version is not None:
        assert m["vid"] == str(version), resp
    assert resp["etag"] == f'W/"{m["vid"]}"', resp
    assert INSTANT_RE.match(resp["lastModified"]), resp
    assert entry["fullUrl"] == f"{BASE}/{rtype}/{m['id']}", entry
    return m["id"]


def assert_failed(r, status: int, index: int) -> None:  # noqa: ANN001
    """The transaction failed as a whole with ``status``, naming Bundle.entry[index]."""
    issues = assert_outcome(r, status)
    text = " ".join([i.get("diagnostics", "") for i in issues] + [e for i in issues for e in i.get("expression", [])])
    assert f"Bundle.entry[{index}]" in text, issues


def count(client, rtype: str, **params: str) -> int:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def read(client, rtype: str, id: str) -> dict[str, Any]:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}/{id}")
    assert r.status_code == 200, r.text
    return r.json()


def history_size(client, path: str = "") -> int:  # noqa: ANN001
    """Number of versions in the history of ``path`` (a resource, a type, or "" for the system)."""
    r = client.get(f"/fhir/{path}/_history" if path else "/fhir/_history", params={"_count": "1000"})
    assert r.status_code == 200, r.text
    return len(r.json().get("entry", []))


def observation(subject: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": subject}, **extra}


def mrn(value: str) -> list[dict[str, str]]:
    return [{"system": SYS, "value": value}]


# -- the basics ----------------------------------------------------------------------------------


def test_transaction_creates_and_links_resources(client) -> None:
    p, o = urn(), urn()
    entries = transact(client,
                       post(patient(id="ignored-id", gender="female", identifier=mrn("1")), p),
                       post(observation(p), o))
    pid = check_write(entries[0], "Patient", 201, version=1)
    oid = check_write(entries[1], "Observation", 201, version=1)
    assert pid != "ignored-id" and pid != p.split(":")[-1]
    assert_outcome(client.get("/fhir/Patient/ignored-id"), 404)
    # Default Prefer: neither resource nor outcome in the response entries.
    assert all("resource" not in e and "outcome" not in e["response"] for e in entries)

    stored_patient = read(client, "Patient", pid)
    assert stored_patient["gender"] == "female" and stored_patient["meta"]["versionId"] == "1"
    stored = read(client, "Observation", oid)
    assert stored["subject"] == {"reference": f"Patient/{pid}"}
    assert stored["meta"]["versionId"] == "1"
    # The search index holds the rewritten reference, not the urn.
    found = client.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [oid]
    assert count(client, "Observation", subject=p) == 0


def test_every_post_gets_its_own_new_id(client) -> None:
    entries = transact(client, *[post(patient(id="same", birthDate=f"200{i}")) for i in range(4)])
    ids = [check_write(e, "Patient", 201, version=1) for e in entries]
    assert len(set(ids)) == 4 and "same" not in ids
    assert [read(client, "Patient", i)["birthDate"] for i in ids] == [f"200{i}" for i in range(4)]


def test_empty_transaction(client) -> None:
    r = send(client, {"resourceType": "Bundle", "type": "transaction"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response"
    assert body.get("entry", []) == []


def test_put_entries_create_and_update(client) -> None:
    existing = create(client, patient(gender="male"))
    entries = transact(client,
                       put_entry(patient(id="new-one", gender="female")),
                       put_entry({**existing, "gender": "other"}))
    assert check_write(entries[0], "Patient", 201, version=1) == "new-one"
    assert check_write(entries[1], "Patient", 200, version=2) == existing["id"]
    assert read(client, "Patient", "new-one")["gender"] == "female"
    current = read(client, "Patient", existing["id"])
    assert current["gender"] == "other" and current["meta"]["versionId"] == "2"
    # and again: versions keep counting
    entries = transact(client, put_entry({**existing, "gender": "unknown"}))
    check_write(entries[0], "Patient", 200, version=3)


def test_delete_entries(client) -> None:
    a = create(client, patient(gender="male"))
    b = create(client, patient(gender="female"))
    entries = transact(client, delete_entry(f"Patient/{a['id']}"), delete_entry("Patient/never-existed"))
    assert [e["response"]["status"][:3] for e in entries] == ["200", "200"]
    assert_outcome(client.get(f"/fhir/Patient/{a['id']}"), 410)
    assert read(client, "Patient", b["id"])["meta"]["versionId"] == "1"
    assert count(client, "Patient") == 1


def test_response_entries_follow_request_order(client) -> None:
    old = create(client, patient(gender="male"))
    keep = create(client, patient(gender="female"))
    entries = transact(
        client,
        get_entry(f"Patient/{keep['id']}"),
        put_entry(patient(id="put-1", gender="other")),
        delete_entry(f"Patient/{old['id']}"),
        post(patient(birthDate="2001-02-03")),
        get_entry("Patient?gender=other"),
    )
    assert code(entries[0]) == 200 and entries[0]["resource"]["id"] == keep["id"]
    assert check_write(entries[1], "Patient", 201, version=1) == "put-1"
    assert code(entries[2]) == 200
    new_id = check_write(entries[3], "Patient", 201, version=1)
    assert read(client, "Patient", new_id)["birthDate"] == "2001-02-03"
    search = entries[4]["resource"]
    assert search["resourceType"] == "Bundle" and search["type"] == "searchset"
    assert [e["resource"]["id"] for e in search["entry"] if e.get("search", {}).get("mode", "match") == "match"] \
        == ["put-1"]


# -- Prefer ----------------------------------------------------------------------------------------


def test_prefer_representation_returns_the_written_resources(client) -> None:
    p = urn()
    entries = transact(client, post(patient(gender="female"), p), post(observation(p)),
                       prefer="return=representation")
    pid = check_write(entries[0], "Patient", 201)
    oid = check_write(entries[1], "Observation", 201)
    assert entries[0]["resource"] == read(client, "Patient", pid)
    assert entries[1]["resource"] == read(client, "Observation", oid)
    assert entries[1]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert "outcome" not in entries[0]["response"]


def test_prefer_operation_outcome(client) -> None:
    entries = transact(client, post(patient(gender="female")), prefer="return=OperationOutcome")
    check_write(entries[0], "Patient", 201)
    assert "resource" not in entries[0]
    assert entries[0]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[0]["response"]["outcome"]["issue"]


def test_get_entries_always_carry_the_resource(client) -> None:
    a = create(client, patient(gender="male", identifier=mrn("g1")))
    for prefer in (None, "return=minimal", "return=OperationOutcome"):
        entries = transact(client, get_entry(f"Patient/{a['id']}"),
                           get_entry(f"Patient?identifier={SYS}|g1"), prefer=prefer)
        assert code(entries[0]) == 200 and entries[0]["resource"] == read(client, "Patient", a["id"])
        assert code(entries[1]) == 200
        found = entries[1]["resource"]
        assert found["resourceType"] == "Bundle" and found["type"] == "searchset" and found["total"] == 1
        assert found["entry"][0]["resource"]["id"] == a["id"]


# -- processing order: DELETE, POST, PUT/PATCH, GET ------------------------------------------------


def test_get_entries_see_the_writes_of_the_transaction(client) -> None:
    existing = create(client, patient(gender="male"))
    entries = transact(
        client,
        get_entry(f"Patient?identifier={SYS}|order-1"),  # listed first, done last
        get_entry(f"Patient/{existing['id']}"),
        post(patient(identifier=mrn("order-1"))),
        put_entry({**existing, "gender": "female"}),
    )
    new_id = check_write(entries[2], "Patient", 201)
    found = entries[0]["resource"]
    assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == new_id
    assert entries[1]["resource"]["gender"] == "female"
    assert entries[1]["resource"]["meta"]["versionId"] == "2"


def test_delete_is_done_before_post_whatever_the_order(client) -> None:
    old = create(client, patient(identifier=mrn("dup"), gender="male"))
    # Were the DELETE done in list order, it would match two patients (412); done first, it matches the old one.
    entries = transact(client, post(patient(identifier=mrn("dup"), gender="female")),
                       delete_entry(f"Patient?identifier={SYS}|dup"))
    new_id = check_write(entries[0], "Patient", 201)
    assert code(entries[1]) == 200
    assert_outcome(client.get(f"/fhir/Patient/{old['id']}"), 410)
    assert read(client, "Patient", new_id)["gender"] == "female"
    assert count(client, "Patient", identifier=f"{SYS}|dup") == 1


def test_delete_then_put_of_another_resource(client) -> None:
    a = create(client, patient(gender="male"))
    entries = transact(client, put_entry(patient(id="b", gender="female")), delete_entry(f"Patient/{a['id']}"))
    check_write(entries[0], "Patient", 201)
    assert code(entries[1]) == 200
    assert_outcome(client.get(f"/fhir/Patient/{a['id']}"), 410)
    assert count(client, "Patient") == 1


# -- reference rewriting -----------------------------------------------------------------------


def test_references_are_rewritten_everywhere(client) -> None:
    p, d, e = urn(), urn(), urn()
    obs = observation(
        p,
        performer=[{"reference": d}],
        encounter={"reference": e},
        specimen={"reference": "#sp"},
        contained=[{"resourceType": "Specimen", "id": "sp", "subject": {"reference": p}}],
        extension=[{"url": "http://example.org/ext", "valueReference": {"reference": d}},
                   {"url": "http://example.org/nested", "extension": [
                       {"url": "inner", "valueReference": {"reference": p}}]}],
        text={"status": "generated",
              "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>Subject: <a href="{p}">the patient</a></p></div>'},
    )
    enc = {"resourceType": "Encounter", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": p},
           "participant": [{"individual": {"reference": d}}, {"individual": {"reference": d}}]}
    entries = transact(client,
                       post(obs),
                       post(enc, e),
                       post({"resourceType": "Practitioner", "name": [{"family": "Who"}]}, d),
                       post(patient(generalPractitioner=[{"reference": d}]), p))
    oid = check_write(entries[0], "Observation", 201)
    eid = check_write(entries[1], "Encounter", 201)
    did = check_write(entries[2], "Practitioner", 201)
    pid = check_write(entries[3], "Patient", 201)

    o = read(client, "Observation", oid)
    assert o["subject"]["reference"] == f"Patient/{pid}"
    assert o["performer"] == [{"reference": f"Practitioner/{did}"}]
    assert o["encounter"] == {"reference": f"Encounter/{eid}"}
    assert o["specimen"] == {"reference": "#sp"}  # a local reference stays as it is
    assert o["contained"][0]["subject"] == {"reference": f"Patient/{pid}"}
    assert o["extension"][0]["valueReference"] == {"reference": f"Practitioner/{did}"}
    assert o["extension"][1]["extension"][0]["valueReference"] == {"reference": f"Patient/{pid}"}
    assert f'href="Patient/{pid}"' in o["text"]["div"]
    enc_stored = read(client, "Encounter", eid)
    assert enc_stored["subject"] == {"reference": f"Patient/{pid}"}
    assert [x["individual"]["reference"] for x in enc_stored["participant"]] == [f"Practitioner/{did}"] * 2
    assert read(client, "Patient", pid)["generalPractitioner"] == [{"reference": f"Practitioner/{did}"}]
    for rtype, rid in (("Observation", oid), ("Encounter", eid), ("Patient", pid)):
        assert "urn:uuid" not in client.get(f"/fhir/{rtype}/{rid}").text, rtype
    # The search index was built from the rewritten references.
    assert count(client, "Encounter", participant=f"Practitioner/{did}") == 1
    assert count(client, "Observation", performer=f"Practitioner/{did}") == 1


def test_urn_oid_full_urls_are_rewritten(client) -> None:
    oid_url = "urn:oid:1.2.840.113619.6.1.99"
    entries = transact(client,
                       post({"resourceType": "Organization", "name": "Acme"}, oid_url),
                       post(patient(managingOrganization={"reference": oid_url})))
    org_id = check_write(entries[0], "Organization", 201)
    pid = check_write(entries[1], "Patient", 201)
    assert read(client, "Patient", pid)["managingOrganization"] == {"reference": f"Organization/{org_id}"}


def test_circular_references_get_one_version_each(client) -> None:
    a, b = urn(), urn()
    entries = transact(client,
                       post(patient(link=[{"other": {"reference": b}, "type": "seealso"}]), a),
                       post(patient(link=[{"other": {"reference": a}, "type": "seealso"}]), b))
    aid = check_write(entries[0], "Patient", 201, version=1)
    bid = check_write(entries[1], "Patient", 201, version=1)
    assert read(client, "Patient", aid)["link"][0]["other"] == {"reference": f"Patient/{bid}"}
    assert read(client, "Patient", bid)["link"][0]["other"] == {"reference": f"Patient/{aid}"}
    for rid in (aid, bid):
        # Rewriting references must not leave an intermediate version behind.
        assert history_size(client, f"Patient/{rid}") == 1
        assert read(client, "Patient", rid)["meta"]["versionId"] == "1"


def test_references_to_a_put_entry_become_its_id(client) -> None:
    p = urn()
    entries = transact(client, post(observation(p)), put_entry(patient(id="known-1"), full_url=p))
    oid = check_write(entries[0], "Observation", 201)
    assert check_write(entries[1], "Patient", 201) == "known-1"
    assert read(client, "Observation", oid)["subject"] == {"reference": "Patient/known-1"}


def test_ordinary_references_are_left_alone(client) -> None:
    entries = transact(client, post(observation("Patient/elsewhere", performer=[
        {"reference": "http://other.example/fhir/Practitioner/9"}])))
    o = read(client, "Observation", check_write(entries[0], "Observation", 201))
    assert o["subject"] == {"reference": "Patient/elsewhere"}
    assert o["performer"] == [{"reference": "http://other.example/fhir/Practitioner/9"}]


# -- conditional create, update, delete, read inside a transaction ---------------------------------


def test_if_none_exist_match_creates_nothing_and_links_to_the_existing(client) -> None:
    existing = create(client, patient(identifier=mrn("inx-1")))
    p = urn()
    entries = transact(client,
                       post(patient(identifier=mrn("inx-1"), gender="male"), p,
                            if_none_exist=f"identifier={SYS}|inx-1"),
                       post(observation(p)))
    assert entries[0]["response"]["status"].startswith("200")
    m = LOCATION_RE.match(entries[0]["response"]["location"])
    assert m and m["type"] == "Patient" and m["id"] == existing["id"] and m["vid"] == "1"
    oid = check_write(entries[1], "Observation", 201)
    assert read(client, "Observation", oid)["subject"] == {"reference": f"Patient/{existing['id']}"}
    assert count(client, "Patient") == 1
    assert "gender" not in read(client, "Patient", existing["id"])  # not updated either


def test_if_none_exist_without_match_creates(client) -> None:
    create(client, patient(identifier=mrn("other")))
    p = urn()
    entries = transact(client, post(patient(identifier=mrn("inx-2")), p, if_none_exist=f"identifier={SYS}|inx-2"),
                       post(observation(p)))
    pid = check_write(entries[0], "Patient", 201)
    oid = check_write(entries[1], "Observation", 201)
    assert read(client, "Observation", oid)["subject"] == {"reference": f"Patient/{pid}"}
    assert count(client, "Patient") == 2


def test_if_none_exist_multiple_matches_fails_the_transaction(client) -> None:
    create(client, patient(identifier=mrn("twice")))
    create(client, patient(identifier=mrn("twice")))
    p = urn()
    r = send(client, bundle(post(observation(p)),
                            post(patient(identifier=mrn("twice")), p, if_none_exist=f"identifier={SYS}|twice")))
    assert_failed(r, 412, 1)
    assert count(client, "Patient") == 2 and count(client, "Observation") == 0


def test_if_match_on_put(client) -> None:
    existing = create(client, patient(gender="male"))
    entries = transact(client, put_entry({**existing, "gender": "female"}, if_match='W/"1"'))
    check_write(entries[0], "Patient", 200, version=2)
    # stale now
    r = send(client, bundle(post(patient(gender="other")),
                            put_entry({**existing, "gender": "unknown"}, if_match='W/"1"')))
    assert_failed(r, 412, 1)
    current = read(client, "Patient", existing["id"])
    assert current["gender"] == "female" and current["meta"]["versionId"] == "2"
    assert count(client, "Patient") == 1


def test_if_match_on_delete(client) -> None:
    existing = create(client, patient(gender="male"))
    put(client, {**existing, "gender": "female"})
    r = send(client, bundle(delete_entry(f"Patient/{existing['id']}", if_match='W/"1"')))
    assert_failed(r, 412, 0)
    assert read(client, "Patient", existing["id"])["meta"]["versionId"] == "2"
    entries = transact(client, delete_entry(f"Patient/{existing['id']}", if_match='W/"2"'))
    assert code(entries[0]) == 200
    assert_outcome(client.get(f"/fhir/Patient/{existing['id']}"), 410)


def test_if_none_match_on_get(client) -> None:
    existing = create(client, patient(gender="male"))
    entries = transact(client,
                       get_entry(f"Patient/{existing['id']}", if_none_match='W/"1"'),
                       get_entry(f"Patient/{existing['id']}", if_none_match='W/"7"'))
    assert entries[0]["response"]["status"].startswith("304")
    assert code(entries[1]) == 200 and entries[1]["resource"]["id"] == existing["id"]


def test_conditional_update_and_delete_entries(client) -> None:
    upd = create(client, patient(identifier=mrn("cu-1"), gender="male"))
    gone = create(client, patient(identifier=mrn("cd-1")))
    entries = transact(client,
                       put_entry(patient(identifier=mrn("cu-1"), gender="female"), f"Patient?identifier={SYS}|cu-1"),
                       put_entry(patient(identifier=mrn("cu-2")), f"Patient?identifier={SYS}|cu-2"),
                       delete_entry(f"Patient?identifier={SYS}|cd-1"))
    assert check_write(entries[0], "Patient", 200, version=2) == upd["id"]
    new_id = check_write(entries[1], "Patient", 201, version=1)
    assert code(entries[2]) == 200
    assert read(client, "Patient", upd["id"])["gender"] == "female"
    assert read(client, "Patient", new_id)["identifier"] == mrn("cu-2")
    assert_outcome(client.get(f"/fhir/Patient/{gone['id']}"), 410)
    assert count(client, "Patient") == 2


def test_references_to_a_conditional_update_entry(client) -> None:
    upd = create(client, patient(identifier=mrn("cu-3")))
    p_new, p_old = urn(), urn()
    entries = transact(client,
                       post(observation(p_new)),
                       post(observation(p_old)),
                       put_entry(patient(identifier=mrn("cu-4")), f"Patient?identifier={SYS}|cu-4", full_url=p_new),
                       put_entry(patient(identifier=mrn("cu-3")), f"Patient?identifier={SYS}|cu-3", full_url=p_old))
    new_id = check_write(entries[2], "Patient", 201)
    assert check_write(entries[3], "Patient", 200) == upd["id"]
    o_new = read(client, "Observation", check_write(entries[0], "Observation", 201))
    o_old = read(client, "Observation", check_write(entries[1], "Observation", 201))
    assert o_new["subject"] == {"reference": f"Patient/{new_id}"}
    assert o_old["subject"] == {"reference": f"Patient/{upd['id']}"}


# -- conditional references --------------------------------------------------------------------


def test_conditional_reference_with_one_match_is_resolved(client) -> None:
    pat = create(client, patient(identifier=mrn("123")))
    doc = create(client, {"resourceType": "Practitioner", "identifier": [{"system": "http://npi", "value": "9"}]})
    enc = {"resourceType": "Encounter", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": f"Patient?identifier={SYS}|123"},
           "participant": [{"individual": {"reference": "Practitioner?identifier=http://npi|9"}}]}
    entries = transact(client, post(enc), post(observation(f"Patient?identifier={SYS}|123")))
    eid = check_write(entries[0], "Encounter", 201)
    oid = check_write(entries[1], "Observation", 201)
    stored = read(client, "Encounter", eid)
    assert stored["subject"] == {"reference": f"Patient/{pat['id']}"}
    assert stored["participant"][0]["individual"] == {"reference": f"Practitioner/{doc['id']}"}
    assert read(client, "Observation", oid)["subject"] == {"reference": f"Patient/{pat['id']}"}
    assert count(client, "Observation", subject=f"Patient/{pat['id']}") == 1


def test_conditional_reference_without_match_fails(client) -> None:
    r = send(client, bundle(post(patient()), post(observation(f"Patient?identifier={SYS}|nobody"))))
    assert_failed(r, 400, 1)
    assert count(client, "Patient") == 0 and count(client, "Observation") == 0


def test_conditional_reference_with_two_matches_fails(client) -> None:
    create(client, patient(identifier=mrn("two")))
    create(client, patient(identifier=mrn("two")))
    r = send(client, bundle(post(patient()), post(observation(f"Patient?identifier={SYS}|two"))))
    assert_failed(r, 412, 1)
    assert count(client, "Patient") == 2 and count(client, "Observation") == 0


# -- PATCH entries -------------------------------------------------------------------------------


def test_patch_entries(client) -> None:
    pat = create(client, patient(gender="male", birthDate="1970-01-01"))
    obs = create(client, observation(f"Patient/{pat['id']}"))
    entries = transact(
        client,
        patch_entry(f"Patient/{pat['id']}", fhirpath_patch(
            {"type": {"valueCode": "replace"}, "path": {"valueString": "Patient.gender"},
             "value": {"valueCode": "female"}})),
        patch_entry(f"Observation/{obs['id']}", json_patch_binary(
            [{"op": "replace", "path": "/status", "value": "amended"}])),
        prefer="return=representation",
    )
    check_write(entries[0], "Patient", 200, version=2)
    check_write(entries[1], "Observation", 200, version=2)
    p = read(client, "Patient", pat["id"])
    assert p["gender"] == "female" and p["birthDate"] == "1970-01-01" and p["meta"]["versionId"] == "2"
    assert entries[0]["resource"] == p
    o = read(client, "Observation", obs["id"])
    assert o["status"] == "amended" and o["subject"] == {"reference": f"Patient/{pat['id']}"}


def test_failing_patch_entry_fails_the_transaction(client) -> None:
    pat = create(client, patient(gender="male"))
    r = send(client, bundle(
        post(patient(gender="female")),
        patch_entry(f"Patient/{pat['id']}", json_patch_binary([{"op": "test", "path": "/gender", "value": "female"},
                                                               {"op": "remove", "path": "/gender"}]))))
    assert_failed(r, 422, 1)
    assert count(client, "Patient") == 1 and read(client, "Patient", pat["id"])["gender"] == "male"
    r = send(client, bundle(post(patient(gender="female")), patch_entry("Patient/nobody", json_patch_binary(
        [{"op": "add", "path": "/gender", "value": "male"}]))))
    assert_failed(r, 404, 1)
    assert count(client, "Patient") == 1


# -- atomicity -----------------------------------------------------------------------------------


FAILURES = {
    # name: (failing entry, expected status)
    "invalid-resource": (post(patient(gender="foo")), 400),
    "resource-type-differs-from-url": ({"resource": patient(), "request": {"method": "POST", "url": "Observation"}},
                                       400),
    "put-id-differs-from-url": (put_entry(patient(id="p2"), "Patient/p1"), 400),
    "stale-if-match": (put_entry(patient(id="spare"), if_match='W/"5"'), 412),
    "conditional-reference-no-match": (post(observation(f"Patient?identifier={SYS}|none")), 400),
    "patch-unknown-resource": (patch_entry("Patient/nobody", json_patch_binary(
        [{"op": "add", "path": "/active", "value": True}])), 404),
    "patch-test-fails": (patch_entry("Patient/spare", json_patch_binary(
        [{"op": "test", "path": "/gender", "value": "female"}])), 422),
}


@pytest.mark.parametrize("name", FAILURES)
def test_a_failing_entry_leaves_nothing_behind(client, name: str) -> None:
    assert put(client, patient(id="keep", gender="male")).status_code == 201
    assert put(client, patient(id="spare", gender="male")).status_code == 201
    victim = create(client, patient(gender="other"))
    failing, status = FAILURES[name]
    p = urn()
    r = send(client, bundle(
        post(patient(identifier=mrn("tx")), p),
        post(observation(p)),
        put_entry(patient(id="fresh", gender="female")),
        put_entry(patient(id="keep", gender="female")),
        delete_entry(f"Patient/{victim['id']}"),
        failing,
    ))
    assert_failed(r, status, 5)
    # Nothing of the bundle happened: not the creates, not the updates, not the delete.
    assert count(client, "Patient") == 3
    assert count(client, "Patient", identifier=f"{SYS}|tx") == 0
    assert count(client, "Observation") == 0
    assert_outcome(client.get("/fhir/Patient/fresh"), 404)
    keep = read(client, "Patient", "keep")
    assert keep["gender"] == "male" and keep["meta"]["versionId"] == "1"
    assert read(client, "Patient", victim["id"])["meta"]["versionId"] == "1"
    assert read(client, "Patient", "spare")["meta"]["versionId"] == "1"
    assert history_size(client, "Patient/keep") == 1
    assert history_size(client) == 3  # the three versions written before the transaction


def test_invalid_resource_error_names_the_element(client) -> None:
    r = send(client, bundle(post(patient()), post(patient(gender="foo"))))
    issues = assert_outcome(r, 400)
    text = " ".join([i.get("diagnostics", "") for i in issues] + [e for i in issues for e in i.get("expression", [])])
    assert "Bundle.entry[1]" in text and "gender" in text, issues
    assert count(client, "Patient") == 0


# -- duplicate identities ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param([put_entry(patient(id="a", gender="male")), put_entry(patient(id="a", gender="female"))],
                     id="put-twice"),
        pytest.param([post(patient(), "urn:uuid:8a3e1f9c-52d4-4b59-9e58-0f5f3a1d2c7e"),
                      post(patient(), "urn:uuid:8a3e1f9c-52d4-4b59-9e58-0f5f3a1d2c7e")], id="same-full-url"),
        pytest.param([put_entry(patient(id="a", gender="male")), delete_entry("Patient/a")], id="put-and-delete"),
    ],
)
def test_two_entries_for_the_same_resource_are_refused(client, entries: list[dict]) -> None:
    r = send(client, bundle(post(patient(identifier=mrn("dup-x"))), *entries))
    assert_outcome(r, 400)
    assert count(client, "Patient") == 0
    assert_outcome(client.get("/fhir/Patient/a"), 404)


# -- the Bundle itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("type_", ["collection", "document", "searchset", "history", "message",
                                   "transaction-response", "batch-response", None])
def test_bundle_type_must_be_batch_or_transaction(client, type_: str | None) -> None:
    body: dict[str, Any] = {"resourceType": "Bundle", "entry": [post(patient())]}
    if type_ is not None:
        body["type"] = type_
    assert_outcome(send(client, body), 400)
    assert count(client, "Patient") == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(patient(gender="male"), id="not-a-bundle"),
        pytest.param({"resourceType": "Bundle", "type": "transaction", "entry": {"request": {}}}, id="entry-object"),
        pytest.param([], id="json-array"),
    ],
)
def test_body_must_be_a_bundle(client, body: Any) -> None:
    assert_outcome(send(client, body), 400)
    assert count(client, "Patient") == 0


def test_unparsable_body(client) -> None:
    r = client.post("/fhir", content=b'{"resourceType": "Bundle", "type": "trans', headers={"Content-Type": JSON_CT})
    assert_outcome(r, 400)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"resource": patient()}, id="no-request"),
        pytest.param({"resource": patient(), "request": {"url": "Patient"}}, id="no-method"),
        pytest.param({"resource": patient(), "request": {"method": "POST"}}, id="no-url"),
        pytest.param({"resource": patient(), "request": {"method": "FETCH", "url": "Patient"}}, id="bad-method"),
        pytest.param({"request": {"method": "POST", "url": "Patient"}}, id="post-without-resource"),
    ],
)
def test_malformed_entry_fails_the_transaction(client, entry: dict) -> None:
    r = send(client, bundle(post(patient(gender="male")), entry))
    assert_outcome(r, 400)
    assert count(client, "Patient") == 0


def test_entry_limit(make_client) -> None:
    client = make_client(bundle_max_entries=3)
    r = send(client, bundle(*[post(patient()) for _ in range(4)]))
    assert_outcome(r, 413, code="too-costly")
    assert count(client, "Patient") == 0
    entries = transact(client, *[post(patient()) for _ in range(3)])
    assert [code(e) for e in entries] == [201, 201, 201]
    r = send(client, bundle(*[get_entry("Patient") for _ in range(4)], type_="batch"))
    assert_outcome(r, 413, code="too-costly")


def test_transaction_in_xml(client) -> None:
    p = urn()
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<Bundle xmlns="http://hl7.org/fhir">
  <type value="transaction"/>
  <entry>
    <fullUrl value="{p}"/>
    <resource><Patient><gender value="female"/></Patient></resource>
    <request><method value="POST"/><url value="Patient"/></request>
  </entry>
  <entry>
    <resource>
      <Observation><status value="final"/><code><text value="x"/></code><subject><reference value="{p}"/></subject>
      </Observation>
    </resource>
    <request><method value="POST"/><url value="Observation"/></request>
  </entry>
</Bundle>"""
    r = client.post("/fhir", content=xml.encode(), headers={"Content-Type": XML_CT})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "transaction-response"
    pid = check_write(body["entry"][0], "Patient", 201)
    oid = check_write(body["entry"][1], "Observation", 201)
    assert read(client, "Observation", oid)["subject"] == {"reference": f"Patient/{pid}"}

    # and the answer in XML when asked
    r = client.post("/fhir", content=xml.replace(p, urn()).encode(), params={"_format": "xml"},
                    headers={"Content-Type": XML_CT})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(XML_CT)
    root = ET.fromstring(r.content)
    assert root.tag == NS + "Bundle"
    assert root.find(NS + "type").get("value") == "transaction-response"
    statuses = [e.find(f"{NS}response/{NS}status").get("value") for e in root.findall(NS + "entry")]
    assert len(statuses) == 2 and all(s.startswith("201") for s in statuses)
    assert count(client, "Patient") == 2 and count(client, "Observation") == 2


# -- CapabilityStatement -------------------------------------------------------------------------


def test_capability_statement_advertises_transaction_and_batch(client) -> None:
    cs = client.get("/fhir/metadata").json()
    codes = {i["code"] for i in cs["rest"][0].get("interaction", [])}
    assert {"transaction", "batch"} <= codes


# -- a real Synthea patient --------------------------------------------------------------------


def _smallest_synthea_patient_bundle() -> dict[str, Any]:
    if not SYNTHEA_SMALL.is_dir():
        pytest.skip(f"Synthea test data not present at {SYNTHEA_SMALL} (optional ../shared folder)")
    for path in sorted(SYNTHEA_SMALL.glob("*.json"), key=lambda p: p.stat().st_size):
        data = json.loads(path.read_bytes())
        if any(e.get("resource", {}).get("resourceType") == "Patient" for e in data.get("entry", [])):
            return data
    pytest.skip(f"no patient bundle in {SYNTHEA_SMALL}")


def test_synthea_patient_transaction(client) -> None:
    data = _smallest_synthea_patient_bundle()
    assert data["type"] == "transaction"
    r = send(client, data)
    assert r.status_code == 200, r.text[:2000]
    body = r.json()
    assert body["type"] == "transaction-response"
    assert len(body["entry"]) == len(data["entry"])
    ids: dict[str, str] = {}  # fullUrl -> new "Type/id"
    for sent, got in zip(data["entry"], body["entry"], strict=True):
        rtype = sent["resource"]["resourceType"]
        new_id = check_write(got, rtype, 201, version=1)
        ids[sent["fullUrl"]] = f"{rtype}/{new_id}"

    expected = Counter(e["resource"]["resourceType"] for e in data["entry"])
    for rtype, n in expected.items():
        assert count(client, rtype) == n, rtype

    (patient_entry,) = [e for e in data["entry"] if e["resource"]["resourceType"] == "Patient"]
    new_patient = ids[patient_entry["fullUrl"]]
    assert new_patient.split("/")[1] != patient_entry["resource"].get("id")
    encounters = client.get("/fhir/Encounter", params={"_count": "100"}).json()["entry"]
    assert encounters and all(e["resource"]["subject"]["reference"] == new_patient for e in encounters)
    assert count(client, "Observation", subject=new_patient) == expected["Observation"]
    # No temporary id survives anywhere in what was stored.
    for target in ids.values():
        assert "urn:uuid" not in client.get(f"/fhir/{target}").text, target
