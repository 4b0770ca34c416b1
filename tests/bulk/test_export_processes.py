"""Bulk $export across real server processes sharing one database (SQLite file, PostgreSQL):
a server killed in the middle of a job, two servers (kick-off on one, poll and download on the
other) and the cluster-wide limit of jobs running at once.

Settings reach the processes as FHIR_EXPORT_* environment variables (ServerProcess passes its
environment on).  PostgreSQL tests skip with a message when no server is reachable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.server_process import ServerProcess
from tests.storage.conftest import PG_URL, pg_schema_url

from .helpers import Key, check_manifest, diff, download, kickoff, wait_manifest


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: sa.Engine | None) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/bulk.db"
        return
    if pg_admin is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set FHIR_TEST_POSTGRES_URL)")
    schema, url = pg_schema_url(pg_admin)
    yield url
    with pg_admin.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def db(database_url: str) -> Iterator[sa.Engine]:
    """A direct look at the export tables, as the servers see them."""
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def settings_env(monkeypatch: pytest.MonkeyPatch, **values: Any) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"FHIR_EXPORT_{name.upper()}", str(value))


def job_row(db: sa.Engine, job_id: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(sa.text("SELECT status, attempts, lease_owner FROM export_job WHERE id = :id"),
                           {"id": job_id}).mappings().first()
        files = conn.execute(sa.text("SELECT count(*) FROM export_file WHERE job_id = :id"), {"id": job_id}).scalar_one()
    assert row is not None
    return {**row, "files": int(files)}


def load(client: httpx.Client, base: str, n_obs: int, n_patients: int = 2) -> dict[Key, dict[str, Any]]:
    """Patients and Observations (round robin) by one transaction; returns what was stored, by key."""
    entries: list[dict[str, Any]] = []
    for i in range(n_patients):
        entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                        "resource": {"resourceType": "Patient", "name": [{"family": f"P{i}"}]},
                        "request": {"method": "POST", "url": "Patient"}})
    for j in range(n_obs):
        entries.append({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": str(j)},
                                     "subject": {"reference": f"urn:uuid:00000000-0000-4000-8000-{j % n_patients:012d}"}},
                        "request": {"method": "POST", "url": "Observation"}})
    r = client.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                    headers={"Prefer": "return=representation"})
    assert r.status_code == 200, r.text[:1000]
    out = {}
    for e in r.json()["entry"]:
        res = e.get("resource")
        if res is None:  # no representation: read it
            loc = e["response"]["location"].split("/_history")[0]
            res = client.get(f"{base}/{loc}").json()
        out[(res["resourceType"], res["id"])] = res
    assert len(out) == len(entries)
    return out


def test_a_job_interrupted_by_a_crash_completes_after_restart(
        database_url: str, db: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # One file per resource makes the job slow enough to kill in the middle; a short lease lets the
    # next server take it over soon.
    settings_env(monkeypatch, lease_seconds=1, poll_seconds=0.05, file_max_resources=1)
    first = ServerProcess(database_url, log_path=tmp_path / "first.log").start()
    try:
        with httpx.Client(timeout=30) as client:
            stored = load(client, first.base, n_obs=200)
            status_url = kickoff(client, f"{first.base}/$export", params={"_type": "Patient,Observation"},
                                 base=first.base)
            job_id = status_url.rsplit("/", 1)[1]
            deadline = time.monotonic() + 20
            while (row := job_row(db, job_id))["files"] < 10:
                assert row["status"] in ("queued", "running"), row
                assert time.monotonic() < deadline, row
                time.sleep(0.005)
            first.kill()
    finally:
        first.kill()
    at_crash = job_row(db, job_id)
    assert at_crash["status"] == "running" and at_crash["files"] >= 10, at_crash
    assert at_crash["files"] < len(stored), "the job was over before the crash: a vacuous test"

    with ServerProcess(database_url, log_path=tmp_path / "second.log") as second, \
            httpx.Client(timeout=30) as client:
        status_url = f"{second.base}/_export/{job_id}"
        manifest = wait_manifest(client, status_url, timeout=40)
        check_manifest(manifest, request=f"{first.base}/$export?_type=Patient,Observation", requires_token=False,
                       base=second.base)
        found = download(client, manifest)  # asserts that nothing comes twice
        assert set(found) == set(stored), diff(set(found), set(stored))
        for key, res in found.items():
            assert res == stored[key], key
    done = job_row(db, job_id)
    assert done["status"] == "done" and done["attempts"] == 2, done
    # The partial files of the crashed run were dropped: only the manifest's files remain.
    assert done["files"] == len(manifest["output"]) == len(stored), done


def test_two_servers_share_the_jobs_and_the_concurrency_limit(
        database_url: str, db: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Kick-off on A, poll and download on B (and the other way round); with
    FHIR_EXPORT_MAX_CONCURRENT=1 the two servers' workers never run two jobs at once."""
    settings_env(monkeypatch, poll_seconds=0.02, file_max_resources=1, max_concurrent=1)
    with ServerProcess(database_url, log_path=tmp_path / "a.log") as a, \
            ServerProcess(database_url, log_path=tmp_path / "b.log") as b, httpx.Client(timeout=30) as client:
        stored = load(client, a.base, n_obs=600, n_patients=3)
        patients = sorted(k for k in stored if k[0] == "Patient")
        members = patients[:2]
        r = client.post(f"{a.base}/Group", json={"resourceType": "Group", "type": "person", "actual": True,
                                                 "member": [{"entity": {"reference": f"Patient/{p[1]}"}} for p in members]})
        assert r.status_code == 201, r.text
        group = ("Group", r.json()["id"])
        member_refs = {f"Patient/{p[1]}" for p in members}
        expected = {group, *members} | {k for k, res in stored.items()
                                         if k[0] == "Observation" and res["subject"]["reference"] in member_refs}
        all_obs = {k for k in stored if k[0] == "Observation"}
        group_query = "_type=Patient,Observation,Group"
        # A first request on each server costs its one-off start-up work (imports, warm-up); paid
        # here, the kick-off on B below takes milliseconds, while A's one-file-per-resource job
        # takes far longer, so B's job is usually queued while A's is queued or running.
        for server in (a, b):
            assert client.get(f"{server.base}/_export/warm-up").status_code == 404
            assert client.get(f"{server.base}/Observation", params={"_count": 1}).status_code == 200

        def kick_off_both(expected_jobs: int) -> tuple[list[str], list[list[str]], int]:
            """Both kick-offs, the export table watched until every job is done: (this pair's
            status URLs, the distinct states seen, the most jobs seen running at once)."""
            samples: list[dict[str, str]] = []
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    with db.connect() as conn:
                        rows = {r[0]: r[1] for r in conn.execute(sa.text("SELECT id, status FROM export_job"))}
                    samples.append(rows)
                    if len(rows) == expected_jobs and set(rows.values()) == {"done"}:
                        return
                    time.sleep(0.005)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                urls = [kickoff(client, f"{a.base}/Group/{group[1]}/$export",
                                params={"_type": "Patient,Observation,Group"}, base=a.base),
                        kickoff(client, f"{b.base}/$export", params={"_type": "Observation"}, base=b.base)]
                watcher.join(40)
            finally:
                stop.set()
                watcher.join()
            assert samples and len(samples[-1]) == expected_jobs and set(samples[-1].values()) == {"done"}, samples[-3:]
            mine = [u.rsplit("/", 1)[1] for u in urls]
            runs = [sorted(x[j] for j in mine if j in x) for x in samples]
            runs = [r for i, r in enumerate(runs) if i == 0 or r != runs[i - 1]]
            return urls, runs, max(list(x.values()).count("running") for x in samples)

        # The check of the limit means something only if B's job was queued while A's was queued or
        # running.  On SQLite, B's kick-off can wait behind the write lock that A's job takes for
        # every file until that job ends (SQLite's busy handler polls with growing sleeps); such a
        # round still checks the limit, and the pair is kicked off again.
        rounds: list[list[list[str]]] = []
        for attempt in range(1, 4):
            urls, runs, most = kick_off_both(2 * attempt)
            assert most == 1, f"{most} jobs ran at once with FHIR_EXPORT_MAX_CONCURRENT=1: {runs}"
            rounds.append(runs)
            if ["queued", "running"] in runs:
                break
        else:
            raise AssertionError(f"the jobs never overlapped: a vacuous check of the limit {rounds}")
        status_a, other_b = urls
        ids = [u.rsplit("/", 1)[1] for u in urls]
        assert [job_row(db, j)["attempts"] for j in ids] == [1, 1]

        # The group job, kicked off on A: polled and downloaded on B, URLs on B's base.
        job_id = ids[0]
        status_b = f"{b.base}/_export/{job_id}"
        manifest_b = wait_manifest(client, status_b)
        check_manifest(manifest_b, request=f"{a.base}/Group/{group[1]}/$export?{group_query}",
                       requires_token=False, base=b.base)
        found = download(client, manifest_b)
        assert set(found) == expected, diff(set(found), expected)
        for key, res in found.items():
            assert res == stored.get(key, res), key
        # A answers the same; a file reads the same from either server.
        manifest_a = wait_manifest(client, status_a)
        assert [(o["type"], o["count"], o["url"].replace(a.base, b.base)) for o in manifest_a["output"]] == \
               [(o["type"], o["count"], o["url"]) for o in manifest_b["output"]]
        url_b = manifest_b["output"][0]["url"]
        assert client.get(url_b).content == client.get(url_b.replace(b.base, a.base)).content
        # The job kicked off on B, downloaded from A.
        manifest = wait_manifest(client, other_b.replace(b.base, a.base))
        assert set(download(client, manifest)) == all_obs
        assert all(o["url"].startswith(a.base + "/") for o in manifest["output"])
        # Cancel on B: gone on A.
        assert client.delete(status_b).status_code == 202
        r = client.get(status_a)
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
        assert client.get(url_b.replace(b.base, a.base)).status_code == 404
