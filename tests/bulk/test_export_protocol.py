"""The $export protocol (Bulk Data Access IG v2.0.0, export.html) on an in-process server: the
CapabilityStatement, kick-off refusals, status while queued, failure, cancel, file splitting,
_since and expiry."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.http.conftest import BASE

from .conftest import FAST
from .helpers import (
    ASYNC,
    Key,
    assert_outcome,
    diff,
    download,
    export,
    key_of,
    kickoff,
    params_resource,
    poll,
    read_ndjson,
    wait_manifest,
)

BULK = "http://hl7.org/fhir/uv/bulkdata"


def create(client: TestClient, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return dict(r.json())


def obs(patient: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient['id']}"}, **extra}


def job_id(status_url: str) -> str:
    return status_url.rsplit("/", 1)[1]


def store(client: TestClient) -> Any:
    return client.app.ctx.exports  # type: ignore[attr-defined]


# -- CapabilityStatement ----------------------------------------------------------------------------

def test_capability_statement_declares_export(fast_client: Callable[..., TestClient]) -> None:
    cs = fast_client().get("/fhir/metadata").json()
    assert f"{BULK}/CapabilityStatement/bulk-data" in cs.get("instantiates", [])
    (rest,) = cs["rest"]
    assert {"name": "export", "definition": f"{BULK}/OperationDefinition/export"} in rest["operation"]
    ops = {r["type"]: {(o["name"], o["definition"]) for o in r.get("operation", [])} for r in rest["resource"]}
    assert ("export", f"{BULK}/OperationDefinition/patient-export") in ops["Patient"]
    assert ("export", f"{BULK}/OperationDefinition/group-export") in ops["Group"]


# -- kick-off refusals ------------------------------------------------------------------------------

BAD_GET = [
    ("/fhir/$export", {}, {"Prefer": ""}, "no Prefer: respond-async"),
    ("/fhir/$export", {"_outputFormat": "application/fhir+json"}, {}, "bad _outputFormat"),
    ("/fhir/$export", {"_outputFormat": "text/csv"}, {}, "bad _outputFormat"),
    ("/fhir/$export", {"_type": "Patient,NoSuchType"}, {}, "unknown _type"),
    ("/fhir/Patient/$export", {"_type": "Bogus"}, {}, "unknown _type"),
    ("/fhir/$export", {"_typeFilter": "Observation"}, {}, "_typeFilter without a query"),
    ("/fhir/$export", {"_typeFilter": "Bogus?x=1"}, {}, "_typeFilter of an unknown type"),
    ("/fhir/$export", {"_typeFilter": "Observation?no-such-param=1"}, {}, "_typeFilter with an unknown parameter"),
    ("/fhir/$export", {"_type": "Patient", "_typeFilter": "Observation?category=x"}, {}, "_typeFilter outside _type"),
    ("/fhir/$export", {"_since": "yesterday"}, {}, "bad _since"),
    ("/fhir/Patient/$export", {"patient": "Patient/x"}, {}, "patient on GET"),
    ("/fhir/$export", {"includeAssociatedData": "LatestProvenanceResources"}, {}, "includeAssociatedData"),
    ("/fhir/Patient/$export", {"includeAssociatedData": "_relevant"}, {}, "includeAssociatedData"),
    ("/fhir/$export", {"noSuchParameter": "1"}, {}, "unknown parameter"),
]


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One server for the refusal tests: none of them may queue a job."""
    db = tmp_path_factory.mktemp("bulk-refusals") / "r.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}", base_url=BASE, auth="off", **FAST))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
        with store(client).db.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM export_job").scalar_one() == 0, "a job was queued"


@pytest.mark.parametrize(("url", "params", "headers", "why"), BAD_GET, ids=[b[3] for b in BAD_GET])
def test_kickoff_refusals(refusing: TestClient, url: str, params: dict[str, str],
                          headers: dict[str, str], why: str) -> None:
    hdrs = {k: v for k, v in {**ASYNC, **headers}.items() if v}
    r = refusing.get(url, params=params, headers=hdrs)
    assert_outcome(r, 400)
    assert r.headers.get("content-location") is None


BAD_POST = [
    ("/fhir/$export", [("patient", "valueReference", {"reference": "Patient/x"})], "patient at system level"),
    ("/fhir/Patient/$export", [("patient", "valueReference", {"reference": "Observation/x"})], "patient not a Patient"),
    ("/fhir/Patient/$export", [("includeAssociatedData", "valueCode", "LatestProvenanceResources")],
     "includeAssociatedData"),
    ("/fhir/Patient/$export", [("_type", "valueString", "Nope")], "unknown _type"),
    ("/fhir/Patient/$export", [("_outputFormat", "valueString", "application/xml")], "bad _outputFormat"),
    ("/fhir/Patient/$export", [("bogus", "valueString", "1")], "unknown parameter"),
]


@pytest.mark.parametrize(("url", "params", "why"), BAD_POST, ids=[b[2] for b in BAD_POST])
def test_post_kickoff_refusals(refusing: TestClient, url: str, params: list[Any], why: str) -> None:
    r = refusing.post(url, headers={**ASYNC, "Content-Type": "application/fhir+json"},
                    content=json.dumps(params_resource(*params)))
    assert_outcome(r, 400)


def test_kickoff_answers_in_fhir_json_only(refusing: TestClient) -> None:
    r = refusing.get("/fhir/$export", headers={**ASYNC, "Accept": "application/fhir+xml"})
    assert r.status_code == 400 and "OperationOutcome" in r.text, (r.status_code, r.text[:300])


def test_post_kickoff_needs_a_parameters_resource(refusing: TestClient) -> None:
    r = refusing.post("/fhir/Patient/$export", headers={**ASYNC, "Content-Type": "application/fhir+json"},
                    json={"resourceType": "Patient"})
    assert_outcome(r, 400)


def test_include_associated_data_refusal_is_clear(refusing: TestClient) -> None:
    r = refusing.get("/fhir/$export", params={"includeAssociatedData": "_relevant"}, headers=ASYNC)
    issues = assert_outcome(r, 400)["issue"]
    assert "includeAssociatedData" in json.dumps(issues)


def test_lenient_handling_ignores_unknown_parameters(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client()
    p = create(client, {"resourceType": "Patient"})
    _, found = export(client, "/fhir/$export", base=BASE, params={"noSuchParameter": "1", "_type": "Patient"},
                      headers={"Prefer": "respond-async, handling=lenient"})
    assert set(found) == {key_of(p)}
    # Strict (the default, and handling=strict) refuses it.
    r = client.get("/fhir/$export", params={"noSuchParameter": "1"},
                   headers={**ASYNC, "Prefer": "respond-async, handling=strict"})
    assert_outcome(r, 400)


def test_kickoff_for_unknown_or_deleted_group(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client()
    assert_outcome(client.get("/fhir/Group/no-such-group/$export", headers=ASYNC), 404, "not-found")
    g = create(client, {"resourceType": "Group", "type": "person", "actual": True})
    assert client.delete(f"/fhir/Group/{g['id']}").status_code in (200, 204)
    r = client.get(f"/fhir/Group/{g['id']}/$export", headers=ASYNC)
    assert r.status_code in (404, 410)
    assert_outcome(r, r.status_code)


def test_other_methods_and_unknown_jobs(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client()
    assert client.put("/fhir/$export", headers=ASYNC, json={}).status_code == 405
    assert_outcome(client.get("/fhir/_export/no-such-job"), 404, "not-found")
    assert_outcome(client.delete("/fhir/_export/no-such-job"), 404, "not-found")
    assert_outcome(client.get("/fhir/_export/no-such-job/file.ndjson"), 404, "not-found")
    create(client, {"resourceType": "Patient"})
    status_url = kickoff(client, "/fhir/$export", params={"_type": "Patient"}, base=BASE)
    wait_manifest(client, status_url)
    assert_outcome(client.get(f"{status_url}/no-such-file.ndjson"), 404, "not-found")
    assert client.post(status_url, json={}).status_code == 405


# -- status -----------------------------------------------------------------------------------------

def test_queued_job_reports_progress_then_cancel(fast_client: Callable[..., TestClient]) -> None:
    """export_max_concurrent=0: no worker may take the job, it stays queued."""
    client = fast_client(export_max_concurrent=0)
    create(client, {"resourceType": "Patient"})
    status_url = kickoff(client, "/fhir/Patient/$export", base=BASE)
    for _ in range(3):
        r = client.get(status_url)
        assert r.status_code == 202, r.text
        assert r.headers["x-progress"] and r.headers["retry-after"].isdigit(), r.headers
        time.sleep(0.1)
    r = client.delete(status_url)
    assert r.status_code == 202
    assert_outcome(client.get(status_url), 404, "not-found")
    assert_outcome(client.delete(status_url), 404, "not-found")


def test_failed_job_answers_500_with_an_operation_outcome(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client()
    create(client, {"resourceType": "Patient"})
    # A job whose stored filter cannot run (kick-off would have refused it): the worker fails it.
    jid = store(client).create(kind="system", group_id=None, request_url=f"{BASE}/$export",
                               params={"types": ["Patient"], "since_ms": None, "patients": None,
                                       "type_filters": {"Patient": ["no-such-param=1"]}},
                               owner=None, principal=None, retention_ms=60_000)
    r, _ = poll(client, f"{BASE}/_export/{jid}")
    assert_outcome(r, 500)


# -- cancel -----------------------------------------------------------------------------------------

def test_cancel_a_finished_job_removes_it_and_its_files(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client()
    create(client, {"resourceType": "Patient"})
    status_url = kickoff(client, "/fhir/$export", base=BASE)
    manifest = wait_manifest(client, status_url)
    urls = [o["url"] for o in manifest["output"]]
    assert urls and client.get(urls[0]).status_code == 200
    r = client.delete(status_url)
    assert r.status_code == 202
    assert_outcome(client.get(status_url), 404, "not-found")
    for url in urls:
        assert_outcome(client.get(url), 404, "not-found")
    assert store(client).files(job_id(status_url)) == []


def _cancel_while_running(client: TestClient) -> str:
    """Cancel a job while its worker writes (one file per resource: slow); returns the job id once
    the single worker thread has let go of it (it took and finished another job after it)."""
    p = create(client, {"resourceType": "Patient"})
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": obs(p), "request": {"method": "POST", "url": "Observation"}}] * 400}
    assert client.post("/fhir", json=bundle).status_code == 200
    status_url = kickoff(client, "/fhir/$export", params={"_type": "Observation"}, base=BASE)
    jid = job_id(status_url)
    deadline = time.monotonic() + 10
    while not store(client).files(jid):
        assert store(client).get(jid).status in ("queued", "running")
        assert time.monotonic() < deadline
        time.sleep(0.002)
    r = client.delete(status_url)
    assert r.status_code == 202
    if r.content:  # a body is optional (export.html#bulk-data-delete-request)
        assert_outcome(r, 202)
    assert_outcome(client.get(status_url), 404, "not-found")
    wait_manifest(client, kickoff(client, "/fhir/$export", params={"_type": "Patient"}, base=BASE))
    assert store(client).get(jid).status == "cancelled"
    assert_outcome(client.get(status_url), 404, "not-found")
    return jid


def test_cancel_a_running_job(fast_client: Callable[..., TestClient]) -> None:
    _cancel_while_running(fast_client(export_file_max_resources=1))


def test_cancel_of_a_running_job_leaves_no_files(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client(export_file_max_resources=1)
    jid = _cancel_while_running(client)
    leftover = store(client).files(jid)
    assert leftover == [], f"{len(leftover)} files of the cancelled job were written after the cancel"


# -- files ------------------------------------------------------------------------------------------

def test_large_types_are_split_into_files(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client(export_file_max_resources=3)
    patients = [create(client, {"resourceType": "Patient"}) for _ in range(2)]
    observations = [create(client, obs(patients[i % 2])) for i in range(10)]
    manifest, found = export(client, "/fhir/$export", base=BASE, params={"_type": "Observation,Patient"})
    files = {t: [o for o in manifest["output"] if o["type"] == t] for t in ("Observation", "Patient")}
    assert [o["count"] for o in files["Observation"]] in ([3, 3, 3, 1],), files["Observation"]
    assert [o["count"] for o in files["Patient"]] == [2]
    assert set(found) == {key_of(r) for r in patients + observations}
    # Each file alone: no resource in two files (download() asserted it), each at most 3 lines.
    for o in manifest["output"]:
        assert len(read_ndjson(client, o["url"], expected_type=o["type"])) <= 3


def test_since_exports_only_later_changes(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client()
    p1 = create(client, {"resourceType": "Patient", "gender": "male"})
    p2 = create(client, {"resourceType": "Patient"})
    old = create(client, obs(p1))
    since = old["meta"]["lastUpdated"]
    time.sleep(0.01)
    new = create(client, obs(p2))
    r = client.put(f"/fhir/Patient/{p1['id']}", json={**p1, "gender": "female"})
    assert r.status_code == 200
    updated = r.json()
    later: set[Key] = {key_of(new), key_of(updated)}
    assert all(x["meta"]["lastUpdated"] > since for x in (new, updated))
    for url in ("/fhir/$export", "/fhir/Patient/$export"):
        _, found = export(client, url, base=BASE, params={"_since": since})
        assert set(found) == later, (url, diff(set(found), later))
        assert found[key_of(updated)]["gender"] == "female"  # the current version
    _, found = export(client, "/fhir/$export", base=BASE, params={"_since": "2000-01-01T00:00:00Z"})
    assert set(found) == {key_of(p1), key_of(p2), key_of(old), key_of(new)}
    manifest, found = export(client, "/fhir/$export", base=BASE, params={"_since": "2999-01-01T00:00:00Z"})
    assert found == {} and manifest["output"] == []
    # _since by POST (valueInstant).
    body = params_resource(("_since", "valueInstant", since))
    _, found = export(client, "/fhir/$export", base=BASE, parameters=body)
    assert set(found) == later


def test_jobs_and_files_expire(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client(export_retention_seconds=2)
    create(client, {"resourceType": "Patient"})
    started = time.monotonic()
    status_url = kickoff(client, "/fhir/$export", params={"_type": "Patient"}, base=BASE)
    manifest = wait_manifest(client, status_url)
    file_url = manifest["output"][0]["url"]
    assert client.get(file_url).status_code == 200
    time.sleep(max(0.0, 2.1 - (time.monotonic() - started)))
    assert_outcome(client.get(status_url), 404, "not-found")
    assert_outcome(client.get(file_url), 404, "not-found")
    jid = job_id(status_url)
    assert store(client).get(jid) is not None and store(client).files(jid)  # expired, not yet purged
    assert store(client).purge_expired() >= 1
    assert store(client).get(jid) is None and store(client).files(jid) == []
    with store(client).db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM export_chunk").scalar_one() == 0


def test_manifest_request_and_transaction_time(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client()
    p = create(client, {"resourceType": "Patient"})
    manifest, found = export(client, "/fhir/Patient/$export", base=BASE,
                             params={"_type": "Patient", "_outputFormat": "ndjson"})
    assert set(found) == {key_of(p)}
    # transactionTime: no resource in the export is newer than it.
    assert manifest["transactionTime"] >= p["meta"]["lastUpdated"]
    assert manifest["requiresAccessToken"] is False


def test_download_is_repeatable_and_files_are_stable(fast_client: Callable[..., TestClient]) -> None:
    client = fast_client(export_file_max_resources=2)
    for _ in range(5):
        create(client, {"resourceType": "Patient"})
    status_url = kickoff(client, "/fhir/$export", base=BASE)
    m1 = wait_manifest(client, status_url)
    m2 = wait_manifest(client, status_url)
    assert m1 == m2
    first = download(client, m1)
    assert download(client, m1) == first and len(first) == 5


# -- a worker whose lease ran out ---------------------------------------------------------------------

def test_a_stalled_worker_adds_nothing_to_a_job_taken_over(fast_client: Callable[..., TestClient]) -> None:
    """Worker A stalls past its lease, B takes the job over (dropping A's partial output) and runs it;
    A wakes up and writes its page before its next renewal tells it to stop.  The job's output must
    still hold every resource once.  (The app's own worker is kept out: export_max_concurrent=0.  One
resource a file: A's writes reach the database before its renewal, as they do whenever a page
fills a file or a 1 MB chunk.)"""
    from fhir_server.bulk.jobs import LeaseLost
    from fhir_server.bulk.worker import run_job

    client = fast_client(export_max_concurrent=0, export_file_max_resources=1)
    p = create(client, {"resourceType": "Patient"})
    observations = {key_of(create(client, obs(p))) for _ in range(3)}
    ctx = client.app.ctx  # type: ignore[attr-defined]
    st = store(client)
    jid = st.create(kind="system", group_id=None, request_url=f"{BASE}/$export", owner=None, principal=None,
                    params={"types": ["Observation"], "since_ms": None, "type_filters": {}, "patients": None},
                    retention_ms=60_000)
    stalled = st.claim("worker-a", 0, 5)  # a lease that has already run out
    assert stalled is not None and stalled.id == jid
    taker = st.claim("worker-b", 60_000, 5)
    assert taker is not None and taker.id == jid and taker.attempts == 2
    with pytest.raises(LeaseLost):  # its first write finds the job is no longer its own
        run_job(ctx, st, stalled, "worker-a", 0)
    run_job(ctx, st, taker, "worker-b", 60_000)
    assert st.finish(jid, "worker-b")
    manifest = wait_manifest(client, f"{BASE}/_export/{jid}")
    assert set(download(client, manifest)) == observations  # download() fails on a resource found twice
