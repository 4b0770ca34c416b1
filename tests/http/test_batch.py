"""Batches: POST [base] with a Bundle of type "batch" (R4 http.html#transaction, bundle.html).

Each entry stands alone: a failing entry gets its own error status and OperationOutcome in
response.outcome while the others take effect, and the HTTP status is 200.  There is no urn:uuid
resolution between entries; conditional references (Type?criteria) are resolved per entry.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tests.http.conftest import BASE, FHIR_NS, JSON_CT, XML_CT, assert_outcome, create, patient, put

NS = "{" + FHIR_NS + "}"
LOCATION_RE = re.compile(r"^(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})/_history/(?P<vid>[0-9]+)$")
INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
SYS = "http://hospital.example/mrn"


# -- helpers -------------------------------------------------------------------------------------


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def batch(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, *, if_none_exist: str | None = None) -> dict:
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if if_none_exist is not None:
        request["ifNoneExist"] = if_none_exist
    entry: dict[str, Any] = {"resource": resource, "request": request}
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def put_entry(resource: dict[str, Any], url: str | None = None, *, if_match: str | None = None) -> dict:
    request: dict[str, Any] = {"method": "PUT", "url": url or f"{resource['resourceType']}/{resource['id']}"}
    if if_match is not None:
        request["ifMatch"] = if_match
    return {"resource": resource, "request": request}


def delete_entry(url: str) -> dict:
    return {"request": {"method": "DELETE", "url": url}}


def get_entry(url: str, *, if_none_match: str | None = None) -> dict:
    request = {"method": "GET", "url": url}
    if if_none_match is not None:
        request["ifNoneMatch"] = if_none_match
    return {"request": request}


def patch_entry(url: str, resource: dict[str, Any]) -> dict:
    return {"resource": resource, "request": {"method": "PATCH", "url": url}}


def json_patch_binary(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(ops).encode()).decode()}


def fhirpath_replace(path: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path},
        {"name": "value", **value}]}]}


def run(client, *entries: dict[str, Any], prefer: str | None = None) -> list[dict[str, Any]]:  # noqa: ANN001
    """Send a batch; it answers 200 with a batch-response holding one entry per request entry."""
    headers = {"Content-Type": JSON_CT}
    if prefer is not None:
        headers["Prefer"] = prefer
    r = client.post("/fhir", content=json.dumps(batch(*entries)), headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(JSON_CT)
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "batch-response", body
    assert len(body.get("entry", [])) == len(entries), body
    return body["entry"]


def code(entry: dict[str, Any]) -> int:
    status = entry["response"]["status"]
    assert re.match(r"^\d{3}( |$)", status), status
    return int(status[:3])


def check_write(entry: dict[str, Any], rtype: str, status: int, *, version: int | None = None) -> str:
    resp = entry["response"]
    assert resp["status"].startswith(str(status)), resp
    m = LOCATION_RE.match(resp["location"])
    assert m and m["type"] == rtype, resp
    if version is not None:
        assert m["vid"] == str(version), resp
    assert resp["etag"] == f'W/"{m["vid"]}"', resp
    assert INSTANT_RE.match(resp["lastModified"]), resp
    assert entry["fullUrl"] == f"{BASE}/{rtype}/{m['id']}", entry
    return m["id"]


def check_error(entry: dict[str, Any], status: int) -> list[dict[str, Any]]:
    """A failed batch entry: its own status and an OperationOutcome in response.outcome."""
    assert code(entry) == status, entry
    outcome = entry["response"].get("outcome")
    assert outcome and outcome["resourceType"] == "OperationOutcome", entry
    assert any(i["severity"] in ("error", "fatal") for i in outcome["issue"]), outcome
    assert "location" not in entry["response"], entry
    return outcome["issue"]


def count(client, rtype: str, **params: str) -> int:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def read(client, rtype: str, id: str) -> dict[str, Any]:  # noqa: ANN001
    r = client.get(f"/fhir/{rtype}/{id}")
    assert r.status_code == 200, r.text
    return r.json()


def observation(subject: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": subject}, **extra}


def mrn(value: str) -> list[dict[str, str]]:
    return [{"system": SYS, "value": value}]


# -- independent entries -------------------------------------------------------------------------


def test_failing_entries_do_not_stop_the_others(client) -> None:
    stale = create(client, patient(gender="male"))
    put(client, {**stale, "gender": "female"})
    doomed = create(client, patient(gender="other"))
    entries = run(
        client,
        post(patient(identifier=mrn("ok-1"))),                               # 0 ok
        post(patient(gender="foo")),                                         # 1 invalid
        put_entry(patient(id="b", gender="female")),                         # 2 ok
        get_entry("Patient/does-not-exist"),                                 # 3 404
        delete_entry(f"Patient/{doomed['id']}"),                             # 4 ok
        put_entry({**stale, "gender": "unknown"}, if_match='W/"1"'),         # 5 stale
        post(observation(f"Patient?identifier={SYS}|nobody")),               # 6 unresolvable
        {"resource": patient()},                                             # 7 no request
        put_entry(patient(id="c"), "Patient/d"),                             # 8 id differs from url
        post(observation("Patient/b")),                                      # 9 ok
    )
    new_id = check_write(entries[0], "Patient", 201, version=1)
    check_error(entries[1], 400)
    assert check_write(entries[2], "Patient", 201, version=1) == "b"
    check_error(entries[3], 404)
    assert code(entries[4]) == 200
    check_error(entries[5], 412)
    check_error(entries[6], 400)
    check_error(entries[7], 400)
    check_error(entries[8], 400)
    oid = check_write(entries[9], "Observation", 201)
    # Successful entries carry no outcome by default.
    for i in (0, 2, 9):
        assert "outcome" not in entries[i]["response"] and "resource" not in entries[i]

    assert read(client, "Patient", new_id)["identifier"] == mrn("ok-1")
    assert read(client, "Patient", "b")["gender"] == "female"
    assert_outcome(client.get(f"/fhir/Patient/{doomed['id']}"), 410)
    current = read(client, "Patient", stale["id"])
    assert current["gender"] == "female" and current["meta"]["versionId"] == "2"
    assert_outcome(client.get("/fhir/Patient/c"), 404)
    assert_outcome(client.get("/fhir/Patient/d"), 404)
    assert read(client, "Observation", oid)["subject"] == {"reference": "Patient/b"}
    assert count(client, "Patient") == 3  # stale, new, b
    assert count(client, "Observation") == 1


def test_invalid_entry_outcome_names_the_problem(client) -> None:
    entries = run(client, post(patient(gender="foo")), post(patient(gender="male")))
    issues = check_error(entries[0], 400)
    text = " ".join([i.get("diagnostics", "") for i in issues] + [e for i in issues for e in i.get("expression", [])])
    assert "gender" in text, issues
    check_write(entries[1], "Patient", 201)
    assert count(client, "Patient") == 1


def test_response_entries_follow_request_order(client) -> None:
    a = create(client, patient(gender="male"))
    entries = run(client,
                  get_entry(f"Patient/{a['id']}"),
                  post(patient(birthDate="2000")),
                  delete_entry("Patient/nothing"),
                  put_entry(patient(id="x1", birthDate="2001")),
                  get_entry("Patient?birthdate=2001"))
    assert code(entries[0]) == 200 and entries[0]["resource"]["id"] == a["id"]
    assert read(client, "Patient", check_write(entries[1], "Patient", 201))["birthDate"] == "2000"
    assert code(entries[2]) == 200
    assert check_write(entries[3], "Patient", 201) == "x1"
    assert code(entries[4]) == 200 and entries[4]["resource"]["type"] == "searchset"


def test_get_entries(client) -> None:
    a = create(client, patient(gender="male", identifier=mrn("g")))
    gone = create(client, patient())
    assert client.delete(f"/fhir/Patient/{gone['id']}").status_code == 200
    for prefer in (None, "return=minimal"):
        entries = run(client,
                      get_entry(f"Patient/{a['id']}"),
                      get_entry(f"Patient?identifier={SYS}|g"),
                      get_entry(f"Patient/{a['id']}/_history/1"),
                      get_entry(f"Patient/{gone['id']}"),
                      prefer=prefer)
        assert code(entries[0]) == 200 and entries[0]["resource"] == read(client, "Patient", a["id"])
        found = entries[1]["resource"]
        assert found["type"] == "searchset" and found["total"] == 1
        assert found["entry"][0]["resource"]["id"] == a["id"]
        assert code(entries[2]) == 200 and entries[2]["resource"]["meta"]["versionId"] == "1"
        check_error(entries[3], 410)


def test_if_none_match_on_get(client) -> None:
    a = create(client, patient())
    entries = run(client,
                  get_entry(f"Patient/{a['id']}", if_none_match='W/"1"'),
                  get_entry(f"Patient/{a['id']}", if_none_match='W/"2"'))
    assert entries[0]["response"]["status"].startswith("304")
    assert code(entries[1]) == 200 and entries[1]["resource"]["id"] == a["id"]


def test_delete_entries(client) -> None:
    a = create(client, patient())
    b = create(client, patient())
    assert client.delete(f"/fhir/Patient/{b['id']}").status_code == 200
    c = create(client, patient())
    entries = run(client, delete_entry(f"Patient/{a['id']}"), delete_entry(f"Patient/{b['id']}"),
                  delete_entry("Patient/never"))
    assert [e["response"]["status"][:3] for e in entries] == ["200", "200", "200"]
    assert_outcome(client.get(f"/fhir/Patient/{a['id']}"), 410)
    assert read(client, "Patient", c["id"])["meta"]["versionId"] == "1"
    assert count(client, "Patient") == 1


def test_post_ignores_the_id_in_the_body(client) -> None:
    entries = run(client, post(patient(id="mine")), post(patient(id="mine")))
    ids = [check_write(e, "Patient", 201, version=1) for e in entries]
    assert len(set(ids)) == 2 and "mine" not in ids


def test_put_updates_make_new_versions(client) -> None:
    a = create(client, patient(gender="male"))
    entries = run(client, put_entry({**a, "gender": "female"}, if_match='W/"1"'))
    check_write(entries[0], "Patient", 200, version=2)
    entries = run(client, put_entry({**a, "gender": "other"}))
    check_write(entries[0], "Patient", 200, version=3)
    assert read(client, "Patient", a["id"])["gender"] == "other"


# -- Prefer --------------------------------------------------------------------------------------


def test_prefer_representation(client) -> None:
    entries = run(client, post(patient(gender="male")), put_entry(patient(id="r1")), post(patient(gender="x")),
                  prefer="return=representation")
    pid = check_write(entries[0], "Patient", 201)
    assert entries[0]["resource"] == read(client, "Patient", pid)
    assert entries[1]["resource"] == read(client, "Patient", "r1")
    check_error(entries[2], 400)
    assert "resource" not in entries[2]


def test_prefer_operation_outcome(client) -> None:
    entries = run(client, post(patient(gender="male")), post(patient(gender="x")), prefer="return=OperationOutcome")
    check_write(entries[0], "Patient", 201)
    assert "resource" not in entries[0]
    outcome = entries[0]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"]
    assert all(i["severity"] in ("information", "warning") for i in outcome["issue"])
    check_error(entries[1], 400)


# -- references ----------------------------------------------------------------------------------


def test_no_urn_resolution_between_batch_entries(client) -> None:
    p = urn()
    entries = run(client, post(patient(), p), post(observation(p)))
    pid = check_write(entries[0], "Patient", 201)
    if code(entries[1]) == 201:
        oid = check_write(entries[1], "Observation", 201)
        assert read(client, "Observation", oid)["subject"] == {"reference": p}
    else:
        check_error(entries[1], code(entries[1]))
    assert count(client, "Observation", subject=f"Patient/{pid}") == 0


def test_conditional_references_are_resolved_per_entry(client) -> None:
    one = create(client, patient(identifier=mrn("one")))
    create(client, patient(identifier=mrn("two")))
    create(client, patient(identifier=mrn("two")))
    entries = run(client,
                  post(observation(f"Patient?identifier={SYS}|one")),
                  post(observation(f"Patient?identifier={SYS}|none")),
                  post(observation(f"Patient?identifier={SYS}|two")),
                  put_entry(observation(f"Patient?identifier={SYS}|one", id="o-put")))
    oid = check_write(entries[0], "Observation", 201)
    assert read(client, "Observation", oid)["subject"] == {"reference": f"Patient/{one['id']}"}
    check_error(entries[1], 400)
    check_error(entries[2], 412)
    assert check_write(entries[3], "Observation", 201) == "o-put"
    assert read(client, "Observation", "o-put")["subject"] == {"reference": f"Patient/{one['id']}"}
    assert count(client, "Observation") == 2
    assert count(client, "Observation", subject=f"Patient/{one['id']}") == 2


# -- conditional create --------------------------------------------------------------------------


def test_if_none_exist(client) -> None:
    existing = create(client, patient(identifier=mrn("inx")))
    create(client, patient(identifier=mrn("many")))
    create(client, patient(identifier=mrn("many")))
    entries = run(client,
                  post(patient(identifier=mrn("inx"), gender="male"), if_none_exist=f"identifier={SYS}|inx"),
                  post(patient(identifier=mrn("fresh")), if_none_exist=f"identifier={SYS}|fresh"),
                  post(patient(identifier=mrn("many")), if_none_exist=f"identifier={SYS}|many"))
    assert entries[0]["response"]["status"].startswith("200")
    m = LOCATION_RE.match(entries[0]["response"]["location"])
    assert m and m["id"] == existing["id"]
    assert "gender" not in read(client, "Patient", existing["id"])
    check_write(entries[1], "Patient", 201)
    check_error(entries[2], 412)
    assert count(client, "Patient") == 4  # inx, many x2, fresh
    assert count(client, "Patient", identifier=f"{SYS}|many") == 2


# -- conditional update / delete entries ---------------------------------------------------------


def test_conditional_update_and_delete_entries(client) -> None:
    upd = create(client, patient(identifier=mrn("cu"), gender="male"))
    create(client, patient(identifier=mrn("cd-many")))
    create(client, patient(identifier=mrn("cd-many")))
    gone = create(client, patient(identifier=mrn("cd")))
    entries = run(client,
                  put_entry(patient(identifier=mrn("cu"), gender="female"), f"Patient?identifier={SYS}|cu"),
                  delete_entry(f"Patient?identifier={SYS}|cd"),
                  delete_entry(f"Patient?identifier={SYS}|cd-many"))
    assert check_write(entries[0], "Patient", 200, version=2) == upd["id"]
    assert code(entries[1]) == 200
    check_error(entries[2], 412)
    assert read(client, "Patient", upd["id"])["gender"] == "female"
    assert_outcome(client.get(f"/fhir/Patient/{gone['id']}"), 410)
    assert count(client, "Patient", identifier=f"{SYS}|cd-many") == 2


# -- PATCH entries -------------------------------------------------------------------------------


def test_patch_entries(client) -> None:
    a = create(client, patient(gender="male", birthDate="1980-05-05"))
    b = create(client, patient(gender="male"))
    c = create(client, patient(gender="male"))
    d = create(client, patient(gender="male"))
    entries = run(
        client,
        patch_entry(f"Patient/{a['id']}", json_patch_binary([{"op": "replace", "path": "/gender", "value": "female"}])),
        patch_entry(f"Patient/{b['id']}", fhirpath_replace("Patient.gender", {"valueCode": "other"})),
        patch_entry(f"Patient/{c['id']}", json_patch_binary([{"op": "test", "path": "/gender", "value": "x"}])),
        patch_entry("Patient/nobody", json_patch_binary([{"op": "add", "path": "/active", "value": True}])),
        patch_entry(f"Patient/{d['id']}", json_patch_binary([{"op": "replace", "path": "/gender", "value": "foo"}])),
        prefer="return=representation",
    )
    check_write(entries[0], "Patient", 200, version=2)
    assert entries[0]["resource"]["gender"] == "female" and entries[0]["resource"]["birthDate"] == "1980-05-05"
    assert entries[0]["resource"] == read(client, "Patient", a["id"])
    check_write(entries[1], "Patient", 200, version=2)
    assert entries[1]["resource"]["gender"] == "other"
    assert read(client, "Patient", b["id"])["gender"] == "other"
    check_error(entries[2], 422)
    check_error(entries[3], 404)
    check_error(entries[4], 400)
    for unchanged in (c, d):
        assert read(client, "Patient", unchanged["id"]) == unchanged


# -- the Bundle itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"resource": patient(), "request": {"url": "Patient"}}, id="no-method"),
        pytest.param({"resource": patient(), "request": {"method": "POST"}}, id="no-url"),
        pytest.param({"resource": patient(), "request": {"method": "FETCH", "url": "Patient"}}, id="bad-method"),
        pytest.param({"request": {"method": "POST", "url": "Patient"}}, id="post-without-resource"),
        pytest.param({"resource": patient(), "request": {"method": "POST", "url": "Observation"}}, id="type-mismatch"),
    ],
)
def test_malformed_entry_gets_400_alone(client, entry: dict) -> None:
    entries = run(client, entry, post(patient(gender="male")))
    check_error(entries[0], 400)
    check_write(entries[1], "Patient", 201)
    assert count(client, "Patient") == 1
    assert count(client, "Observation") == 0


def test_unknown_type_in_an_entry(client) -> None:
    entries = run(client, post({"resourceType": "Foo"}), get_entry("Foo/1"), post(patient()))
    assert code(entries[0]) in (400, 404)
    check_error(entries[0], code(entries[0]))
    assert code(entries[1]) in (400, 404)
    check_error(entries[1], code(entries[1]))
    check_write(entries[2], "Patient", 201)


def test_empty_batch(client) -> None:
    r = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "batch-response" and body.get("entry", []) == []


def test_entry_limit(make_client) -> None:
    client = make_client(bundle_max_entries=3)
    r = client.post("/fhir", json=batch(*[post(patient()) for _ in range(4)]))
    assert_outcome(r, 413, code="too-costly")
    assert count(client, "Patient") == 0
    entries = run(client, *[post(patient()) for _ in range(3)])
    assert [code(e) for e in entries] == [201, 201, 201]


def test_batch_in_xml(client) -> None:
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
<Bundle xmlns="http://hl7.org/fhir">
  <type value="batch"/>
  <entry>
    <resource><Patient><gender value="female"/></Patient></resource>
    <request><method value="POST"/><url value="Patient"/></request>
  </entry>
  <entry>
    <resource><Patient><gender value="foo"/></Patient></resource>
    <request><method value="POST"/><url value="Patient"/></request>
  </entry>
</Bundle>"""
    r = client.post("/fhir", content=xml, params={"_format": "xml"}, headers={"Content-Type": XML_CT})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(XML_CT)
    root = ET.fromstring(r.content)
    assert root.tag == NS + "Bundle" and root.find(NS + "type").get("value") == "batch-response"
    entries = root.findall(NS + "entry")
    assert len(entries) == 2
    assert entries[0].find(f"{NS}response/{NS}status").get("value").startswith("201")
    assert entries[1].find(f"{NS}response/{NS}status").get("value").startswith("400")
    assert entries[1].find(f"{NS}response/{NS}outcome/{NS}OperationOutcome") is not None
    assert count(client, "Patient") == 1
