"""Transactions, conditional writes and PATCH on both SQL backends: atomicity and race-freedom.

The HTTP tests (tests/http) run on SQLite through the TestClient only.  Here the same interactions
run on a SQLite file and on PostgreSQL:

* atomicity and in-transaction visibility through the app (TestClient, a fresh database per test);
* races through two real server processes sharing one database (``fhir-server serve``), the
  racing clients alternating between them, so that both in-process (threads, group commit) and
  cross-process serialisation (BEGIN IMMEDIATE, PostgreSQL advisory locks) are exercised.

PostgreSQL tests use FHIR_TEST_POSTGRES_URL and a schema of their own; they skip when it is
unreachable (see tests/storage/conftest.py).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.server_process import ServerProcess
from tests.storage.conftest import PG_URL, pg_schema_url

BASE = "http://testserver/fhir"
JSON = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
LOCATION_RE = re.compile(r"^(?:.*/)?(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})/_history/(?P<vid>[0-9]+)$")
N = 8

Client = TestClient | httpx.Client


# -- databases and servers -----------------------------------------------------------------------


def _drop(admin: sa.Engine, schema: str) -> None:
    with admin.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def _skip_without_pg(admin: sa.Engine | None) -> sa.Engine:
    if admin is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set FHIR_TEST_POSTGRES_URL)")
    return admin


@pytest.fixture(params=["sqlite-file", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: sa.Engine | None) -> Iterator[TestClient]:
    """The app on a fresh database of each backend, through the TestClient."""
    schema = None
    if request.param == "sqlite-file":
        url = f"sqlite:///{tmp_path}/bundle.db"
    else:
        schema, url = pg_schema_url(_skip_without_pg(pg_admin))
    try:
        with TestClient(create_app(Settings(database_url=url, base_url=BASE)),
                        raise_server_exceptions=False) as c:
            yield c
    finally:
        if schema is not None and pg_admin is not None:
            _drop(pg_admin, schema)


@dataclass
class Servers:
    backend: str
    bases: tuple[str, str]
    logs: tuple[Path, Path]

    def base(self, i: int) -> str:
        """The server the ``i``-th racer talks to: they alternate."""
        return self.bases[i % 2]

    def server_errors(self) -> list[str]:
        """Lines of the server logs that report an unexpected error (an HTTP 500) or a traceback."""
        out = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            out += [line for line in text.splitlines() if "unexpected error" in line or "Traceback" in line]
        return out


@pytest.fixture(scope="module", params=["sqlite-file", "postgresql"])
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            pg_admin: sa.Engine | None) -> Iterator[Servers]:
    """Two server processes on one database (each test uses identifiers of its own)."""
    tmp = tmp_path_factory.mktemp(f"servers-{request.param}")
    schema = None
    if request.param == "sqlite-file":
        url = f"sqlite:///{tmp}/race.db"
    else:
        schema, url = pg_schema_url(_skip_without_pg(pg_admin))
    logs = (tmp / "a.log", tmp / "b.log")
    # One after the other: the first migrates the fresh database, the second finds it ready.
    a = ServerProcess(url, log_path=logs[0]).start()
    try:
        b = ServerProcess(url, log_path=logs[1]).start()
        try:
            yield Servers(request.param, (a.base, b.base), logs)
        finally:
            b.stop()
    finally:
        a.stop()
        if schema is not None and pg_admin is not None:
            _drop(pg_admin, schema)


def race(n: int, fn: Callable[[int, httpx.Client], httpx.Response]) -> list[httpx.Response]:
    """Run ``fn(i, client)`` for i in range(n) at once (released together by a barrier)."""
    barrier = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        with httpx.Client(timeout=60) as c:
            barrier.wait()
            return fn(i, c)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


# -- FHIR helpers --------------------------------------------------------------------------------


def system() -> str:
    """An identifier system of its own for each test (the servers' database is shared)."""
    return f"urn:test:{uuid.uuid4().hex[:12]}"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def ident(sys: str, value: str) -> list[dict[str, str]]:
    return [{"system": sys, "value": value}]


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **extra}


def observation(subject: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": subject}}


def bundle(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


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


def get_entry(url: str) -> dict:
    return {"request": {"method": "GET", "url": url}}


def patch_entry(url: str, ops: list[dict[str, Any]]) -> dict:
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(json.dumps(ops).encode()).decode()}
    return {"resource": binary, "request": {"method": "PATCH", "url": url}}


def send(c: Client, base: str, body: dict[str, Any]) -> httpx.Response:
    return c.post(base, content=json.dumps(body), headers=JSON)


def entries_of(r: httpx.Response, n: int) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "transaction-response", body
    assert len(body["entry"]) == n, body
    return body["entry"]


def status_of(entry: dict[str, Any]) -> int:
    return int(entry["response"]["status"][:3])


def located(entry: dict[str, Any]) -> tuple[str, str, int]:
    m = LOCATION_RE.match(entry["response"]["location"])
    assert m, entry
    return m["type"], m["id"], int(m["vid"])


def assert_outcome(r: httpx.Response, statuses: tuple[int, ...]) -> list[dict[str, Any]]:
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"], body
    return body["issue"]


def create(c: Client, base: str, resource: dict[str, Any]) -> dict[str, Any]:
    r = c.post(f"{base}/{resource['resourceType']}", json=resource)
    assert r.status_code == 201, r.text
    return r.json()


def read(c: Client, base: str, rtype: str, id: str) -> dict[str, Any]:
    r = c.get(f"{base}/{rtype}/{id}")
    assert r.status_code == 200, r.text
    return r.json()


def count(c: Client, base: str, rtype: str, **params: str) -> int:
    r = c.get(f"{base}/{rtype}", params={**params, "_summary": "count"})
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def matches(c: Client, base: str, rtype: str, **params: str) -> list[dict[str, Any]]:
    r = c.get(f"{base}/{rtype}", params={**params, "_count": "100"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode") == "match"]


def history(c: Client, base: str, path: str = "") -> list[dict[str, Any]]:
    """The history entries of ``path`` ("" for the system), newest first."""
    r = c.get(f"{base}/{path}/_history" if path else f"{base}/_history", params={"_count": "1000"})
    assert r.status_code == 200, r.text
    return list(r.json().get("entry", []))


def history_versions(c: Client, base: str, path: str) -> list[int]:
    """The version numbers in the history of ``path`` (whose versions are not deletes)."""
    return sorted(int(e["resource"]["meta"]["versionId"]) for e in history(c, base, path))


# == 1. atomicity: the LAST entry fails, nothing of the bundle remains ============================

LAST_FAILURES = {
    # name: (failing last entry given the ids of the setup, accepted statuses)
    # Validation fails after the DELETE entries already ran (they go first).
    "invalid-resource": (lambda ids: post(patient(gender="not-a-gender")), (400,)),
    # A stale ifMatch fails at the write of the last PUT, after every POST and earlier PUT was written.
    "stale-if-match": (lambda ids: put_entry(patient(id=ids["target"], gender="other"), if_match='W/"7"'), (412,)),
    # A PATCH whose test operation fails, in the PUT/PATCH phase.
    "patch-test-fails": (lambda ids: patch_entry(f"Patient/{ids['target']}",
                                                 [{"op": "test", "path": "/gender", "value": "female"}]), (422,)),
    # A GET entry runs last of all, after every write.
    "get-not-found": (lambda ids: get_entry(f"Patient/{uuid.uuid4()}"), (404,)),
    # A conditional reference that matches nothing.
    "conditional-reference-no-match": (lambda ids: post(observation(f"Patient?identifier={ids['sys']}|nobody")),
                                       (400,)),
}


def _atomic_setup(c: TestClient) -> dict[str, str]:
    sys = system()
    ids = {"sys": sys}
    for name in ("doomed", "cond-doomed", "kept", "spare", "target"):
        ids[name] = create(c, BASE, patient(identifier=ident(sys, name), gender="male"))["id"]
    ids["fresh"] = f"fresh-{uuid.uuid4().hex[:8]}"
    return ids


def _atomic_entries(ids: dict[str, str]) -> list[dict[str, Any]]:
    sys, p = ids["sys"], urn()
    return [
        delete_entry(f"Patient/{ids['doomed']}"),
        post(patient(identifier=ident(sys, "new")), p),
        post(observation(p)),
        put_entry(patient(id=ids["fresh"], identifier=ident(sys, "fresh"))),  # update-as-create
        put_entry(patient(id=ids["kept"], identifier=ident(sys, "kept"), gender="female")),
        put_entry(patient(identifier=ident(sys, "cu"), gender="female"), f"Patient?identifier={sys}|cu"),
        delete_entry(f"Patient?identifier={sys}|cond-doomed"),
        patch_entry(f"Patient/{ids['spare']}", [{"op": "add", "path": "/active", "value": True}]),
    ]


@pytest.mark.parametrize("failure", LAST_FAILURES)
def test_transaction_failing_last_entry_leaves_nothing(client: TestClient, failure: str) -> None:
    c = client
    ids = _atomic_setup(c)
    sys = ids["sys"]
    patients_before = count(c, BASE, "Patient")
    history_before = history(c, BASE)
    make_failing, statuses = LAST_FAILURES[failure]
    entries = _atomic_entries(ids)
    entries.append(make_failing(ids))
    r = send(c, BASE, bundle(*entries))
    issues = assert_outcome(r, statuses)
    text = " ".join(i.get("diagnostics", "") + " ".join(i.get("expression", [])) for i in issues)
    assert f"Bundle.entry[{len(entries) - 1}]" in text, issues

    # Nothing of the bundle is visible: no creates, no updates, no deletes, no history.
    assert count(c, BASE, "Patient") == patients_before
    for value in ("new", "fresh", "cu"):
        assert count(c, BASE, "Patient", identifier=f"{sys}|{value}") == 0, value
    assert count(c, BASE, "Observation") == 0
    assert_outcome(c.get(f"{BASE}/Patient/{ids['fresh']}"), (404,))
    for name in ("doomed", "cond-doomed", "kept", "spare", "target"):
        res = read(c, BASE, "Patient", ids[name])
        assert res["meta"]["versionId"] == "1" and res["gender"] == "male" and "active" not in res, res
        assert len(history(c, BASE, f"Patient/{ids[name]}")) == 1
    assert history(c, BASE) == history_before

    # Control: without the failing entry the same bundle commits and every change shows.
    entries = _atomic_entries(ids)
    out = entries_of(send(c, BASE, bundle(*entries)), len(entries))
    assert [status_of(e) for e in out] == [200, 201, 201, 201, 200, 201, 200, 200]
    assert_outcome(c.get(f"{BASE}/Patient/{ids['doomed']}"), (410,))
    assert_outcome(c.get(f"{BASE}/Patient/{ids['cond-doomed']}"), (410,))
    assert read(c, BASE, "Patient", ids["kept"])["gender"] == "female"
    assert read(c, BASE, "Patient", ids["spare"])["active"] is True
    assert read(c, BASE, "Patient", ids["fresh"])["meta"]["versionId"] == "1"
    for value in ("new", "fresh", "cu"):
        assert count(c, BASE, "Patient", identifier=f"{sys}|{value}") == 1, value
    assert count(c, BASE, "Observation") == 1
    assert len(history(c, BASE)) == len(history_before) + len(entries)  # one version per entry


# == 2. conditional references and ifNoneExist inside the transaction =============================


def test_if_none_exist_and_conditional_references_in_one_transaction(client: TestClient) -> None:
    c = client
    sys = system()
    p1 = create(c, BASE, patient(identifier=ident(sys, "p1")))
    a, b = urn(), urn()
    entries = [
        post(patient(identifier=ident(sys, "p1"), gender="male"), a, if_none_exist=f"identifier={sys}|p1"),
        post(patient(identifier=ident(sys, "p2")), b, if_none_exist=f"identifier={sys}|p2"),
        post(observation(a)),
        post(observation(b)),
        post(observation(f"Patient?identifier={sys}|p1")),
    ]
    out = entries_of(send(c, BASE, bundle(*entries)), 5)
    assert status_of(out[0]) == 200 and located(out[0]) == ("Patient", p1["id"], 1)
    assert status_of(out[1]) == 201
    p2 = located(out[1])[1]
    subjects = [read(c, BASE, "Observation", located(e)[1])["subject"]["reference"] for e in out[2:]]
    assert subjects == [f"Patient/{p1['id']}", f"Patient/{p2}", f"Patient/{p1['id']}"]
    assert "gender" not in read(c, BASE, "Patient", p1["id"])  # a matched ifNoneExist writes nothing
    assert count(c, BASE, "Observation", subject=f"Patient/{p1['id']}") == 2

    # Again: both ifNoneExist now match; nothing new but the Observations.
    out = entries_of(send(c, BASE, bundle(*entries)), 5)
    assert [status_of(e) for e in out] == [200, 200, 201, 201, 201]
    assert located(out[1]) == ("Patient", p2, 1)
    assert count(c, BASE, "Patient", identifier=f"{sys}|p2") == 1
    assert count(c, BASE, "Observation") == 6


def test_matching_sees_the_transactions_own_deletes(client: TestClient) -> None:
    """ifNoneExist, conditional update and conditional references are evaluated on the transaction's
    own connection: a DELETE entry (processed first) already hides its target from them."""
    c = client
    sys = system()
    old = create(c, BASE, patient(identifier=ident(sys, "dup")))
    old_cu = create(c, BASE, patient(identifier=ident(sys, "cu")))
    out = entries_of(send(c, BASE, bundle(
        post(patient(identifier=ident(sys, "dup")), if_none_exist=f"identifier={sys}|dup"),
        put_entry(patient(identifier=ident(sys, "cu"), gender="female"), f"Patient?identifier={sys}|cu"),
        delete_entry(f"Patient/{old['id']}"),
        delete_entry(f"Patient/{old_cu['id']}"),
    )), 4)
    assert [status_of(e) for e in out] == [201, 201, 200, 200]
    new_id, new_cu = located(out[0])[1], located(out[1])[1]
    assert new_id != old["id"] and new_cu != old_cu["id"]
    assert [p["id"] for p in matches(c, BASE, "Patient", identifier=f"{sys}|dup")] == [new_id]
    assert [p["id"] for p in matches(c, BASE, "Patient", identifier=f"{sys}|cu")] == [new_cu]

    # A conditional reference to what the same transaction deletes matches nothing: all is undone.
    target = create(c, BASE, patient(identifier=ident(sys, "ref")))
    r = send(c, BASE, bundle(post(observation(f"Patient?identifier={sys}|ref")),
                             delete_entry(f"Patient/{target['id']}")))
    assert_outcome(r, (400,))
    assert read(c, BASE, "Patient", target["id"])["meta"]["versionId"] == "1"
    assert count(c, BASE, "Observation") == 0


def test_failed_transaction_undoes_its_if_none_exist_create(client: TestClient) -> None:
    c = client
    sys = system()
    p = urn()
    r = send(c, BASE, bundle(post(patient(identifier=ident(sys, "x")), p, if_none_exist=f"identifier={sys}|x"),
                             post(observation(p)),
                             put_entry(patient(id="missing", gender="male"), if_match='W/"1"')))
    assert_outcome(r, (412,))
    assert count(c, BASE, "Patient", identifier=f"{sys}|x") == 0 and count(c, BASE, "Observation") == 0
    out = entries_of(send(c, BASE, bundle(post(patient(identifier=ident(sys, "x")), p,
                                               if_none_exist=f"identifier={sys}|x"))), 1)
    assert status_of(out[0]) == 201


# == 3. races across two server processes =========================================================


def _no_server_errors(servers: Servers) -> None:
    assert servers.server_errors() == []


def test_concurrent_conditional_updates_create_once(servers: Servers) -> None:
    sys = system()
    url = f"Patient?identifier={sys}|same"

    def update(i: int, c: httpx.Client) -> httpx.Response:
        body = patient(identifier=ident(sys, "same"), name=[{"family": f"F{i}"}])
        return c.put(f"{servers.base(i)}/{url}", json=body, headers=JSON)

    results = race(N, update)
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * (N - 1) + [201], [(r.status_code, r.text[:300]) for r in results]
    ids = {r.json()["id"] for r in results}
    assert len(ids) == 1
    with httpx.Client(timeout=30) as c:
        found = matches(c, servers.bases[0], "Patient", identifier=f"{sys}|same")
        assert len(found) == 1
        assert found[0]["meta"]["versionId"] == str(N)  # one version per successful update
        assert history_versions(c, servers.bases[1], f"Patient/{found[0]['id']}") == list(range(1, N + 1))
        assert sorted(int(r.json()["meta"]["versionId"]) for r in results) == list(range(1, N + 1))
    _no_server_errors(servers)


def test_concurrent_transactions_with_if_none_exist_create_once(servers: Servers) -> None:
    sys = system()

    def transact(i: int, c: httpx.Client) -> httpx.Response:
        p = urn()
        return send(c, servers.base(i), bundle(
            post(patient(identifier=ident(sys, "x")), p, if_none_exist=f"identifier={sys}|x"),
            post(observation(p)),
            # A conditional update entry as well: taken in the same order by every transaction.
            put_entry({"resourceType": "Organization", "identifier": ident(sys, "org"), "name": f"O{i}"},
                      f"Organization?identifier={sys}|org"),
        ))

    results = race(N, transact)
    outs = [entries_of(r, 3) for r in results]
    assert sorted(status_of(o[0]) for o in outs) == [200] * (N - 1) + [201]
    patient_ids = {located(o[0])[1] for o in outs}
    assert len(patient_ids) == 1
    assert sorted(status_of(o[2]) for o in outs) == [200] * (N - 1) + [201]
    assert len({located(o[2])[1] for o in outs}) == 1
    (pid,) = patient_ids
    with httpx.Client(timeout=30) as c:
        base = servers.bases[0]
        assert count(c, base, "Patient", identifier=f"{sys}|x") == 1
        assert count(c, base, "Observation", subject=f"Patient/{pid}") == N
        orgs = matches(c, base, "Organization", identifier=f"{sys}|org")
        assert len(orgs) == 1 and orgs[0]["meta"]["versionId"] == str(N)
    _no_server_errors(servers)


def test_concurrent_conditional_creates_of_every_kind_create_once(servers: Servers) -> None:
    """POST with If-None-Exist, a transaction's ifNoneExist and PUT [type]?criteria, all with the
    same criteria and racing each other, share one lock: exactly one of them creates."""
    sys = system()
    query = f"identifier={sys}|mix"

    def write(i: int, c: httpx.Client) -> tuple[str, int]:
        body = patient(identifier=ident(sys, "mix"), name=[{"family": f"F{i}"}])
        base = servers.base(i)
        if i % 3 == 0:
            r = c.post(f"{base}/Patient", json=body, headers={**JSON, "If-None-Exist": query})
            assert r.status_code in (200, 201), r.text
            return "post", r.status_code
        if i % 3 == 1:
            (entry,) = entries_of(send(c, base, bundle(post(body, if_none_exist=query))), 1)
            return "tx", status_of(entry)
        r = c.put(f"{base}/Patient?{query}", json=body, headers=JSON)
        assert r.status_code in (200, 201), r.text
        return "put", r.status_code

    barrier = threading.Barrier(9)

    def one(i: int) -> tuple[str, int]:
        with httpx.Client(timeout=60) as c:
            barrier.wait()
            return write(i, c)

    with ThreadPoolExecutor(9) as pool:
        results = list(pool.map(one, range(9)))
    assert [status for _, status in results].count(201) == 1, results
    puts = sum(1 for kind, _ in results if kind == "put")
    created_by_put = ("put", 201) in results
    with httpx.Client(timeout=30) as c:
        found = matches(c, servers.bases[1], "Patient", identifier=f"{sys}|mix")
    assert len(found) == 1, found
    # Every conditional PUT wrote a version; a POST or transaction that created wrote the first one.
    assert found[0]["meta"]["versionId"] == str(puts + (0 if created_by_put else 1)), results
    _no_server_errors(servers)


def test_concurrent_json_patches_lose_no_update(servers: Servers) -> None:
    sys = system()
    with httpx.Client(timeout=30) as c:
        # "/name/-" appends to an array that must exist: the Patient starts with one name.
        pid = create(c, servers.bases[0], patient(identifier=ident(sys, "p"), name=[{"family": "Start"}]))["id"]

    def append(i: int, c: httpx.Client) -> httpx.Response:
        ops = [{"op": "add", "path": "/name/-", "value": {"family": f"F{i}"}}]
        return c.patch(f"{servers.base(i)}/Patient/{pid}", content=json.dumps(ops), headers=JSON_PATCH)

    results = race(N, append)
    codes = [r.status_code for r in results]
    with httpx.Client(timeout=30) as c:
        final = read(c, servers.bases[1], "Patient", pid)
        versions = history_versions(c, servers.bases[0], f"Patient/{pid}")
    families = [n["family"] for n in final["name"]]
    ok = codes.count(200)
    # Whatever the statuses: no acknowledged patch is lost, and versions count the successful ones.
    for i, r in enumerate(results):
        if r.status_code == 200:
            assert f"F{i}" in families, (i, families)
        else:
            assert_outcome(r, (409, 503))
            assert f"F{i}" not in families, (i, families)
    assert final["meta"]["versionId"] == str(1 + ok)
    assert versions == list(range(1, 2 + ok))
    assert sorted(families) == sorted(["Start"] + [f"F{i}" for i in range(N) if codes[i] == 200])
    _no_server_errors(servers)
    # And none fails: a PATCH that merely raced with others is applied after them, not refused.
    assert codes == [200] * N, sorted(codes)


def test_concurrent_conditional_deletes_delete_once(servers: Servers) -> None:
    sys = system()
    with httpx.Client(timeout=30) as c:
        pid = create(c, servers.bases[0], patient(identifier=ident(sys, "d")))["id"]

    def delete(i: int, c: httpx.Client) -> httpx.Response:
        return c.delete(f"{servers.base(i)}/Patient", params={"identifier": f"{sys}|d"})

    results = race(N, delete)
    assert [r.status_code for r in results] == [200] * N, [r.text[:300] for r in results]
    etags = [r.headers.get("etag") for r in results if r.headers.get("etag")]
    assert etags == ['W/"2"'], [(r.status_code, dict(r.headers), r.text[:200]) for r in results]
    with httpx.Client(timeout=30) as c:
        hist = history(c, servers.bases[1], f"Patient/{pid}")
        assert [e["request"]["method"] for e in hist] == ["DELETE", "POST"]
        assert count(c, servers.bases[0], "Patient", identifier=f"{sys}|d") == 0
    _no_server_errors(servers)


# == 4. opposite lock orders =====================================================================


ROUNDS = 4


def test_transactions_updating_two_resources_in_opposite_orders(servers: Servers) -> None:
    sys = system()
    with httpx.Client(timeout=30) as c:
        a = create(c, servers.bases[0], patient(identifier=ident(sys, "A"), name=[{"family": "init"}]))["id"]
        b = create(c, servers.bases[0], patient(identifier=ident(sys, "B"), name=[{"family": "init"}]))["id"]
    outcomes: list[tuple[str, int, str]] = []  # (tag, status, body)

    def transact(i: int, c: httpx.Client, rnd: int) -> httpx.Response:
        tag = f"r{rnd}t{i}"
        first, second = (a, b) if i == 0 else (b, a)
        return send(c, servers.base(i), bundle(
            put_entry(patient(id=first, identifier=ident(sys, "A" if first == a else "B"), name=[{"family": tag}])),
            put_entry(patient(id=second, identifier=ident(sys, "A" if second == a else "B"),
                              name=[{"family": tag}])),
        ))

    for rnd in range(ROUNDS):
        results = race(2, lambda i, c, rnd=rnd: transact(i, c, rnd))
        for i, r in enumerate(results):
            outcomes.append((f"r{rnd}t{i}", r.status_code, r.text))
    ok = [tag for tag, status, _ in outcomes if status == 200]
    failed = [(tag, status, body[:300]) for tag, status, body in outcomes if status != 200]
    # The resources a transaction names are locked up front in one order, so neither deadlocks.
    for tag, status, body in outcomes:
        assert status == 200, (tag, status, body[:500])
    with httpx.Client(timeout=30) as c:
        tags = {}
        for name, rid in (("A", a), ("B", b)):
            hist = sorted(history(c, servers.bases[1], f"Patient/{rid}"),
                          key=lambda e: int(e["resource"]["meta"]["versionId"]))
            assert len(hist) == len(ok) + 1, (name, len(hist), ok, failed)
            tags[name] = [e["resource"]["name"][0]["family"] for e in hist[1:]]
    # Every successful transaction wrote both resources, the failed ones neither, and the commit
    # order is the same for both (the transactions are serialisable).
    assert sorted(tags["A"]) == sorted(ok)
    assert tags["A"] == tags["B"], tags
    summary = [(t, s, " ".join(text.split())[:160]) for t, s, text in failed]
    print(f"\n[{servers.backend}] opposite-order transactions: {len(ok)} succeeded, failures: {summary}")
    _no_server_errors(servers)
