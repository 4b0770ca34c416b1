"""Behaviour of real server processes: crashes, several processes on one database, a lost database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.server_process import ServerProcess, free_port
from tests.storage.conftest import pg_schema_url
from tests.tcp_proxy import TcpProxy

JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: sa.Engine | None) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/proc.db"
        return
    if pg_admin is None:
        pytest.skip("PostgreSQL not reachable (set FHIR_TEST_POSTGRES_URL)")
    schema, url = pg_schema_url(pg_admin)
    yield url
    with pg_admin.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def _patient(i: int) -> bytes:
    return b'{"resourceType":"Patient","identifier":[{"system":"urn:test","value":"' + str(i).encode() + b'"}]}'


def test_sigkill_loses_no_acknowledged_create(database_url: str, tmp_path: Path) -> None:
    server = ServerProcess(database_url).start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with httpx.Client(timeout=5) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = client.post(f"{server.base}/Patient", content=_patient(i), headers=JSON)
                except httpx.HTTPError:
                    return  # the server died mid-request: that create was never acknowledged
                if r.status_code == 201:
                    acknowledged.append(r.json()["id"])

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acknowledged) >= 150
    with ServerProcess(database_url) as again, httpx.Client(timeout=10) as client:
        missing = [rid for rid in acknowledged if client.get(f"{again.base}/Patient/{rid}").status_code != 200]
        assert missing == []
        total = client.get(f"{again.base}/Patient", params={"_summary": "count"}).json()["total"]
        assert total >= len(acknowledged)


def test_two_servers_share_one_postgresql_database(pg_admin: sa.Engine | None) -> None:
    if pg_admin is None:
        pytest.skip("PostgreSQL not reachable (set FHIR_TEST_POSTGRES_URL)")
    schema, url = pg_schema_url(pg_admin)
    try:
        with ServerProcess(url) as a, ServerProcess(url) as b, httpx.Client(timeout=10) as client:
            r = client.post(f"{a.base}/Patient", content=_patient(1), headers=JSON)
            assert r.status_code == 201
            rid = r.json()["id"]
            got = client.get(f"{b.base}/Patient/{rid}")
            assert got.status_code == 200 and got.json()["identifier"][0]["value"] == "1"
            # Conditional creates racing across both servers still leave exactly one resource.
            since = client.get(f"{a.base}/Patient/{rid}").json()["meta"]["lastUpdated"]
            condition = {"If-None-Exist": f"_lastUpdated=gt{since}", **JSON}
            barrier = threading.Barrier(16)

            def racer(i: int) -> tuple[int, str]:
                base = (a if i % 2 else b).base
                with httpx.Client(timeout=30) as c:
                    barrier.wait()
                    resp = c.post(f"{base}/Patient", content=_patient(100 + i), headers=condition)
                    return resp.status_code, resp.json().get("id", "")

            with ThreadPoolExecutor(16) as pool:
                results = list(pool.map(racer, range(16)))
            assert sorted(s for s, _ in results) == [200] * 15 + [201]
            assert len({rid for _, rid in results}) == 1
            total = client.get(f"{b.base}/Patient", params={"_summary": "count"}).json()["total"]
            assert total == 2
    finally:
        with pg_admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def test_two_workers_stay_correct(database_url: str) -> None:
    """FHIR_WORKERS=2: If-Match races have one winner; concurrent updates number versions without gaps."""
    with ServerProcess(database_url, workers=2) as server, httpx.Client(timeout=30) as client:
        r = client.post(f"{server.base}/Patient", content=_patient(0), headers=JSON)
        rid = r.json()["id"]
        n = 12
        barrier = threading.Barrier(n)
        body = r.json()

        def update(i: int) -> int:
            with httpx.Client(timeout=30) as c:
                barrier.wait()
                doc = {**body, "gender": "male"}
                return c.put(f"{server.base}/Patient/{rid}", json=doc,
                             headers={"If-Match": 'W/"1"', **JSON}).status_code

        with ThreadPoolExecutor(n) as pool:
            codes = list(pool.map(update, range(n)))
        assert sorted(codes) == [200] + [412] * (n - 1)

        def plain_update(i: int) -> int:
            with httpx.Client(timeout=30) as c:
                return c.put(f"{server.base}/Patient/{rid}", json={**body, "birthDate": f"19{i:02d}"},
                             headers=JSON).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(plain_update, range(24))) == {200}
        hist = client.get(f"{server.base}/Patient/{rid}/_history", params={"_count": 100}).json()
        versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in hist["entry"])
        assert versions == list(range(1, 2 + 1 + 24))


def test_lost_database_gives_503_and_recovers(pg_admin: sa.Engine | None) -> None:
    if pg_admin is None:
        pytest.skip("PostgreSQL not reachable (set FHIR_TEST_POSTGRES_URL)")
    schema, url = pg_schema_url(pg_admin)
    u = make_url(url)
    proxy = TcpProxy((u.host or "127.0.0.1", u.port or 5432), free_port()).start()
    proxied = u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with ServerProcess(proxied) as server, httpx.Client(timeout=60) as client:
            r = client.post(f"{server.base}/Patient", content=_patient(1), headers=JSON)
            assert r.status_code == 201
            rid = r.json()["id"]
            proxy.cut()
            down = client.get(f"{server.base}/Patient/{rid}")
            assert down.status_code == 503
            oo = down.json()
            assert oo["resourceType"] == "OperationOutcome" and oo["issue"][0]["code"] == "transient"
            assert client.get(f"http://127.0.0.1:{server.port}/health").status_code == 503
            proxy.start()
            codes = []
            for _ in range(20):
                codes.append(client.get(f"{server.base}/Patient/{rid}").status_code)
                if codes[-1] == 200:
                    break
                time.sleep(0.25)
            assert codes[-1] == 200, codes
    finally:
        proxy.cut()
        with pg_admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
