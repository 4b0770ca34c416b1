"""history for an instance, a type and the system (R4 http.html#history, bundle.html)."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.http.conftest import BASE, assert_outcome, bundle_links, create, local, patient, put, walk_pages


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _key(entry: dict) -> tuple[str, str, str]:
    """(type, id, version) of a history entry, from its fullUrl and etag."""
    rest = entry["fullUrl"][len(BASE) + 1:]
    rtype, rid = rest.split("/")
    etag = entry["response"]["etag"]
    assert etag.startswith('W/"') and etag.endswith('"'), etag
    return rtype, rid, etag[3:-1]


def _check_history_bundle(bundle: dict) -> None:
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    links = bundle_links(bundle)
    assert links["self"].startswith(BASE), links
    for e in bundle.get("entry", []):
        assert e["fullUrl"].startswith(BASE + "/")
        req, resp = e["request"], e["response"]
        assert req["method"] in ("POST", "PUT", "DELETE")
        assert req["url"]
        assert resp["status"].split(" ")[0] in ("200", "201", "204"), resp
        assert resp["etag"].startswith('W/"')
        assert _dt(resp["lastModified"])
        if req["method"] == "DELETE":
            assert "resource" not in e
        else:
            res = e["resource"]
            assert f"{BASE}/{res['resourceType']}/{res['id']}" == e["fullUrl"]
            assert resp["etag"] == f'W/"{res["meta"]["versionId"]}"'
            assert resp["lastModified"] == res["meta"]["lastUpdated"]


def _assert_newest_first(entries: list[dict]) -> None:
    times = [_dt(e["response"]["lastModified"]) for e in entries]
    assert times == sorted(times, reverse=True), times


def _lifecycle(client) -> tuple[str, list[dict]]:
    """create, update, update, delete one Patient; the versions as the server returned them."""
    v1 = create(client, patient(gender="male"))
    pid = v1["id"]
    v2 = put(client, {**v1, "gender": "female"}).json()
    v3 = put(client, {**v1, "gender": "other"}).json()
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    return pid, [v1, v2, v3]


def test_instance_history(client) -> None:
    pid, versions = _lifecycle(client)
    create(client, patient())  # another resource, not in this history
    r = client.get(f"/fhir/Patient/{pid}/_history")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    bundle = r.json()
    _check_history_bundle(bundle)
    entries = bundle["entry"]
    assert [_key(e)[2] for e in entries] == ["4", "3", "2", "1"]
    assert {e["fullUrl"] for e in entries} == {f"{BASE}/Patient/{pid}"}
    if "total" in bundle:
        assert bundle["total"] == 4
    _assert_newest_first(entries)
    # The delete entry: request DELETE, no resource.
    assert entries[0]["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert "resource" not in entries[0]
    # The updates: PUT Patient/id with the version's content.
    for e, v in zip(entries[1:3], [versions[2], versions[1]], strict=True):
        assert e["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
        assert e["response"]["status"].startswith("200")
        assert e["resource"] == v
    # The create.
    assert entries[3]["request"]["method"] == "POST"
    assert entries[3]["request"]["url"] == "Patient"
    assert entries[3]["response"]["status"].startswith("201")
    assert entries[3]["resource"] == versions[0]


def test_instance_history_of_update_as_create(client) -> None:
    client.put("/fhir/Patient/pc1", json=patient(id="pc1"))
    e = client.get("/fhir/Patient/pc1/_history").json()["entry"]
    assert len(e) == 1
    assert e[0]["request"] == {"method": "PUT", "url": "Patient/pc1"}
    assert e[0]["response"]["status"].startswith("201")


def test_instance_history_unknown_id_is_404(client) -> None:
    create(client, patient())
    assert_outcome(client.get("/fhir/Patient/unknown/_history"), 404)


def test_type_history(client) -> None:
    pid, _ = _lifecycle(client)
    other = create(client, patient())
    obs = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    bundle = client.get("/fhir/Patient/_history").json()
    _check_history_bundle(bundle)
    keys = [_key(e) for e in bundle["entry"]]
    assert sorted(keys) == sorted([("Patient", pid, v) for v in "1234"] + [("Patient", other["id"], "1")])
    assert all(k[0] == "Patient" for k in keys)
    assert obs["id"] not in {k[1] for k in keys}
    _assert_newest_first(bundle["entry"])
    assert bundle_links(bundle)["self"].startswith(f"{BASE}/Patient/_history")


def test_system_history(client) -> None:
    pid, _ = _lifecycle(client)
    obs = create(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    bundle = client.get("/fhir/_history").json()
    _check_history_bundle(bundle)
    keys = [_key(e) for e in bundle["entry"]]
    assert sorted(keys) == sorted([("Patient", pid, v) for v in "1234"] + [("Observation", obs["id"], "1")])
    assert keys[0] == ("Observation", obs["id"], "1")  # the newest first
    _assert_newest_first(bundle["entry"])
    assert bundle_links(bundle)["self"].startswith(f"{BASE}/_history")


def test_history_empty(client) -> None:
    bundle = client.get("/fhir/Patient/_history").json()
    assert bundle["type"] == "history"
    assert bundle.get("entry", []) == []
    if "total" in bundle:
        assert bundle["total"] == 0


@pytest.mark.parametrize("scope", ["instance", "type", "system"])
def test_history_paging(client, scope: str) -> None:
    first = create(client, patient())
    pid = first["id"]
    for g in ("male", "female", "other", "unknown", "male", "female"):
        put(client, {**first, "gender": g})
    for _ in range(3):
        create(client, patient())
    url = {"instance": f"/fhir/Patient/{pid}/_history", "type": "/fhir/Patient/_history",
           "system": "/fhir/_history"}[scope]
    everything = client.get(url, params={"_count": "100"}).json()
    expected = [_key(e) for e in everything["entry"]]
    assert len(expected) == (7 if scope == "instance" else 10)

    r = client.get(url, params={"_count": "3"})
    assert r.status_code == 200
    pages = walk_pages(client, r.json())
    assert len(pages) == -(-len(expected) // 3)
    seen: list[tuple[str, str, str]] = []
    for page in pages:
        _check_history_bundle(page)
        assert len(page.get("entry", [])) <= 3
        links = bundle_links(page)
        assert links["self"].startswith(BASE)
        if "next" in links:
            assert links["next"].startswith(BASE + "/"), links
            assert "_count=3" in links["next"]
        seen += [_key(e) for e in page.get("entry", [])]
    assert len(seen) == len(set(seen)), "duplicates across pages"
    assert seen == expected  # same order as one big page: newest first


def test_history_count_zero(client) -> None:
    create(client, patient())
    r = client.get("/fhir/Patient/_history", params={"_count": "0"})
    assert r.status_code == 200
    assert r.json().get("entry", []) == []


def test_history_count_parameter_is_accepted(client) -> None:
    # Regression: history with _count/_since/_at/_cursor once answered 500 (frozen HistoryQuery assigned to).
    create(client, patient())
    create(client, patient())
    r = client.get("/fhir/_history", params={"_count": "1"})
    assert r.status_code == 200, r.text
    assert len(r.json()["entry"]) == 1


def test_history_count_invalid_is_400(client) -> None:
    assert_outcome(client.get("/fhir/_history", params={"_count": "many"}), 400)


def test_history_since(client) -> None:
    a = create(client, patient())
    put(client, {**a, "gender": "male"})
    b = create(client, patient())
    put(client, {**a, "gender": "female"})
    put(client, {**b, "gender": "female"})
    full = client.get("/fhir/_history").json()["entry"]
    assert len(full) == 5
    times = sorted({e["response"]["lastModified"] for e in full})
    for since in times:
        got = client.get("/fhir/_history", params={"_since": since}).json()
        expected = [_key(e) for e in full if _dt(e["response"]["lastModified"]) >= _dt(since)]
        assert [_key(e) for e in got.get("entry", [])] == expected, since
        # _since travels in the links
        assert "_since=" in bundle_links(got)["self"]
    # Instance history with _since, and a time after everything.
    last = client.get(f"/fhir/Patient/{a['id']}/_history").json()["entry"][0]["response"]["lastModified"]
    got = client.get(f"/fhir/Patient/{a['id']}/_history", params={"_since": last}).json()
    assert [_key(e)[2] for e in got["entry"]] == ["3"]
    got = client.get("/fhir/_history", params={"_since": "2999-01-01T00:00:00Z"}).json()
    assert got.get("entry", []) == []
    got = client.get("/fhir/_history", params={"_since": "2000-01-01T00:00:00Z"}).json()
    assert len(got["entry"]) == 5


def test_history_since_invalid_is_400(client) -> None:
    assert_outcome(client.get("/fhir/_history", params={"_since": "yesterday"}), 400)


def test_history_next_link_keeps_since(client) -> None:
    for _ in range(4):
        create(client, patient())
    r = client.get("/fhir/Patient/_history", params={"_count": "2", "_since": "2000-01-01T00:00:00Z"})
    pages = walk_pages(client, r.json())
    assert sum(len(p.get("entry", [])) for p in pages) == 4
    assert "_since=" in bundle_links(pages[0])["next"]
    local(bundle_links(pages[0])["next"])  # absolute, on this server
