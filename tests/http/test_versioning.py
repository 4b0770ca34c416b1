"""Versions and conditional interactions: ETag / If-Match, If-None-Match, If-Modified-Since, If-None-Exist."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

import pytest

from tests.http.conftest import assert_outcome, create, patient, put


def _count(client, rtype: str = "Patient") -> int:
    return client.get(f"/fhir/{rtype}", params={"_summary": "count"}).json()["total"]


def _lu(resource: dict) -> datetime:
    return datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))


# -- versions ----------------------------------------------------------------------------------


def test_each_update_makes_a_new_version(client) -> None:
    created = create(client, patient(gender="male"))
    pid = created["id"]
    last = created
    for n in range(2, 6):
        r = put(client, {**created, "birthDate": f"200{n}"})
        assert r.status_code == 200
        assert r.headers["etag"] == f'W/"{n}"'
        body = r.json()
        assert body["meta"]["versionId"] == str(n)
        assert _lu(body) > _lu(last)
        last = body
    for n in range(2, 6):
        v = client.get(f"/fhir/Patient/{pid}/_history/{n}").json()
        assert v["birthDate"] == f"200{n}" and v["meta"]["versionId"] == str(n)


# -- If-Match (optimistic locking) -------------------------------------------------------------


def test_if_match_stale_version_is_412(client) -> None:
    created = create(client, patient(gender="male"))
    pid = created["id"]
    assert put(client, {**created, "gender": "female"}).status_code == 200
    r = put(client, {**created, "gender": "other"}, headers={"If-Match": 'W/"1"'})
    assert_outcome(r, 412)
    current = client.get(f"/fhir/Patient/{pid}")
    assert current.headers["etag"] == 'W/"2"' and current.json()["gender"] == "female"


def test_if_match_current_version_updates(client) -> None:
    created = create(client, patient(gender="male"))
    r = put(client, {**created, "gender": "female"}, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    r = put(client, {**created, "gender": "other"}, headers={"If-Match": 'W/"2"'})
    assert r.status_code == 200 and r.headers["etag"] == 'W/"3"'
    assert r.json()["gender"] == "other"


def test_if_match_on_absent_resource_is_412(client) -> None:
    r = client.put("/fhir/Patient/new1", json=patient(id="new1"), headers={"If-Match": 'W/"1"'})
    assert_outcome(r, 412)
    assert_outcome(client.get("/fhir/Patient/new1"), 404)


def test_if_match_garbage_is_refused(client) -> None:
    created = create(client, patient())
    r = put(client, created, headers={"If-Match": "not-an-etag"})
    assert r.status_code in (400, 412), r.text
    assert_outcome(r, r.status_code)
    assert client.get(f"/fhir/Patient/{created['id']}").headers["etag"] == 'W/"1"'


# -- conditional read --------------------------------------------------------------------------


def test_if_none_match_current_version_is_304(client) -> None:
    created = create(client, patient())
    r = client.get(f"/fhir/Patient/{created['id']}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers.get("etag") == 'W/"1"'


def test_if_none_match_old_version_is_200(client) -> None:
    created = create(client, patient())
    put(client, {**created, "gender": "male"})
    r = client.get(f"/fhir/Patient/{created['id']}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 200
    assert r.json()["gender"] == "male" and r.headers["etag"] == 'W/"2"'


def test_if_modified_since(client) -> None:
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    lu = _lu(created)
    after = format_datetime(lu + timedelta(minutes=1), usegmt=True)
    before = format_datetime(lu - timedelta(minutes=1), usegmt=True)
    r = client.get(url, headers={"If-Modified-Since": after})
    assert r.status_code == 304 and r.content == b""
    r = client.get(url, headers={"If-Modified-Since": before})
    assert r.status_code == 200 and r.json() == created
    # The Last-Modified value given back, as a cache does, means "not modified".
    lm = client.get(url).headers["last-modified"]
    r = client.get(url, headers={"If-Modified-Since": lm})
    assert r.status_code == 304 and r.content == b""


def test_if_modified_since_after_an_update(client) -> None:
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    lm1 = client.get(url).headers["last-modified"]
    before = format_datetime(_lu(created) - timedelta(seconds=2), usegmt=True)
    put(client, {**created, "gender": "male"})
    r = client.get(url, headers={"If-Modified-Since": before})
    assert r.status_code == 200 and r.json()["gender"] == "male"
    assert parsedate_to_datetime(r.headers["last-modified"]) >= parsedate_to_datetime(lm1)
    assert parsedate_to_datetime(r.headers["last-modified"]) == _lu(r.json()).replace(microsecond=0)


def test_conditional_read_of_deleted_is_still_410(client) -> None:
    created = create(client, patient())
    client.delete(f"/fhir/Patient/{created['id']}")
    assert_outcome(client.get(f"/fhir/Patient/{created['id']}", headers={"If-None-Match": 'W/"1"'}), 410)


# -- conditional create ------------------------------------------------------------------------


def test_conditional_create_no_match_creates(client) -> None:
    create(client, patient())
    r = client.post("/fhir/Patient", json=patient(gender="male"), headers={"If-None-Exist": "_id=nothing-like-this"})
    assert r.status_code == 201, r.text
    assert r.json()["gender"] == "male"
    assert r.headers["location"].endswith(f"/Patient/{r.json()['id']}/_history/1")
    assert _count(client) == 2


def test_conditional_create_one_match_returns_existing(client) -> None:
    existing = create(client, patient(gender="female"))
    r = client.post("/fhir/Patient", json=patient(gender="male"), headers={"If-None-Exist": f"_id={existing['id']}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == existing  # the existing resource, unchanged, not the posted one
    assert r.headers.get("etag") == 'W/"1"'
    assert _count(client) == 1
    assert client.get(f"/fhir/Patient/{existing['id']}").headers["etag"] == 'W/"1"'


def test_conditional_create_one_match_by_last_updated(client) -> None:
    existing = create(client, patient(gender="female"))
    r = client.post("/fhir/Patient", json=patient(gender="male"),
                    headers={"If-None-Exist": f"_lastUpdated=eq{existing['meta']['lastUpdated']}"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == existing["id"]
    assert _count(client) == 1


def test_conditional_create_ignores_other_types_and_deleted(client) -> None:
    obs = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    gone = create(client, patient())
    client.delete(f"/fhir/Patient/{gone['id']}")
    r = client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "_lastUpdated=gt2000-01-01"})
    assert r.status_code == 201, r.text
    r = client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": f"_id={obs['id']}"})
    assert r.status_code == 201, r.text
    assert _count(client) == 2


def test_conditional_create_multiple_matches_is_412(client) -> None:
    create(client, patient())
    create(client, patient())
    r = client.post("/fhir/Patient", json=patient(gender="male"),
                    headers={"If-None-Exist": "_lastUpdated=gt2000-01-01"})
    assert_outcome(r, 412)
    assert _count(client) == 2


def test_conditional_create_by_identifier(client) -> None:
    body = patient(identifier=[{"system": "http://example.org", "value": "123"}])
    cond = {"If-None-Exist": "identifier=http://example.org|123"}
    first = client.post("/fhir/Patient", json=body, headers=cond)
    assert first.status_code == 201, first.text
    again = client.post("/fhir/Patient", json=body, headers=cond)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/fhir/Patient", json=patient(identifier=[{"system": "http://example.org", "value": "9"}]),
                        headers={"If-None-Exist": "identifier=http://example.org|9"})
    assert other.status_code == 201
    assert _count(client) == 2


@pytest.mark.parametrize("criteria", ["foo=bar", "name:above=smith", "_contained=true"])
def test_conditional_create_unsupported_criteria_is_400(client, criteria: str) -> None:
    r = client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": criteria})
    issues = assert_outcome(r, 400)
    assert any(criteria.split("=")[0] in (i.get("diagnostics") or "") for i in issues), issues
    assert _count(client) == 0


def test_conditional_create_empty_criteria_is_400(client) -> None:
    assert_outcome(client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": ""}), 400)
    assert _count(client) == 0


def test_conditional_create_validates_the_body(client) -> None:
    existing = create(client, patient())
    r = client.post("/fhir/Patient", json=patient(gender="foo"), headers={"If-None-Exist": f"_id={existing['id']}"})
    assert_outcome(r, 400)
