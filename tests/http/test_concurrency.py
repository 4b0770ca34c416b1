"""Conditional create under a race, against a real server process (uvicorn), not the TestClient."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
THREADS = 16


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server process for the module; each test uses its own resource type."""
    tmp_path = tmp_path_factory.mktemp("server")
    port = _free_port()
    env = {
        **os.environ,
        "FHIR_PORT": str(port),
        "FHIR_HOST": "127.0.0.1",
        "FHIR_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "FHIR_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    env.pop("FHIR_BASE_URL", None)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "serve"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not become healthy: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_health_and_base_of_the_served_process(server: str) -> None:
    r = httpx.get(f"{server}/health")
    assert r.status_code == 200
    r = httpx.post(f"{server}/fhir/Organization", json={"resourceType": "Organization", "name": "x"})
    assert r.status_code == 201
    # Without FHIR_BASE_URL the links use the host and port the server listens on.
    assert r.headers["location"].startswith(f"{server}/fhir/Organization/")


def test_conditional_create_race_creates_one_resource(server: str) -> None:
    barrier = threading.Barrier(THREADS)
    results: list[tuple[int, str | None, str]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(timeout=30) as c:
            barrier.wait()
            r = c.post(f"{server}/fhir/Person", json={"resourceType": "Person", "gender": "female",
                                                     "name": [{"family": f"Racer{n}"}]},
                       headers={"If-None-Exist": "_lastUpdated=gt2000-01-01"})
            body_id = r.json().get("id") if r.headers.get("content-type", "").startswith("application/fhir+json") \
                else None
            with lock:
                results.append((r.status_code, body_id, r.text))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == THREADS
    statuses = sorted(s for s, _, _ in results)
    assert all(s in (200, 201) for s in statuses), [r for r in results if r[0] not in (200, 201)]
    assert statuses.count(201) == 1, statuses
    ids = {i for _, i, _ in results}
    assert len(ids) == 1 and None not in ids, ids
    (the_id,) = ids
    bundle = httpx.get(f"{server}/fhir/Person", params={"_count": "100"}).json()
    assert bundle["total"] == 1
    assert [e["resource"]["id"] for e in bundle["entry"]] == [the_id]
    assert len(httpx.get(f"{server}/fhir/Person/{the_id}/_history").json()["entry"]) == 1


def test_concurrent_updates_make_distinct_versions(server: str) -> None:
    with httpx.Client() as c:
        assert c.put(f"{server}/fhir/Patient/u1", json={"resourceType": "Patient", "id": "u1"}).status_code == 201
    barrier = threading.Barrier(8)
    etags: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(timeout=30) as c:
            barrier.wait()
            r = c.put(f"{server}/fhir/Patient/u1",
                      json={"resourceType": "Patient", "id": "u1", "name": [{"family": f"W{n}"}]})
            assert r.status_code == 200, r.text
            with lock:
                etags.append(r.headers["etag"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(etags) == sorted(f'W/"{v}"' for v in range(2, 10))
    hist = httpx.get(f"{server}/fhir/Patient/u1/_history").json()
    assert [e["response"]["etag"] for e in hist["entry"]] == [f'W/"{v}"' for v in range(9, 0, -1)]
