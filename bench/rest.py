"""Our server over HTTP: read one Patient by id, and create Patients, each with a distinct body.

The server is started as a user would start it (`python -m fhir_server.cli serve`, configured by
FHIR_* variables) on a throwaway SQLite database with auth off and one worker, so its numbers are
comparable with the one-worker baselines.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.data import REPO_ROOT, create_body
from bench.drive import Settings, drive, spec_for
from bench.loadgen import LoadResult
from bench.servers import HOST, ServerProcess, free_port, serve

CLI_MODULE = "fhir_server.cli"
MEDIA_TYPE = "application/fhir+json"
_LOCATION_ID = re.compile(r"/Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


class SetupError(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """Why our server cannot be benchmarked yet, or None when it can."""
    try:
        found = importlib.util.find_spec(CLI_MODULE) is not None
    except ImportError:
        found = False
    if not found:
        return f"{CLI_MODULE} does not exist yet, so there is no `fhir-server serve` to start"
    return None


PG_URL = os.environ.get("FHIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Target:
    """Which database our server runs on and with how many worker processes."""

    database: str = "sqlite"  # sqlite | postgresql
    workers: int = 1
    auth: bool = False  # FHIR_AUTH=smart, with a bearer token on every request


@contextmanager
def database_url(target: Target, workdir: Path) -> Iterator[str]:
    if target.database == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    import sqlalchemy as sa

    admin = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    schema = "bench_" + uuid.uuid4().hex[:10]
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # noqa: BLE001 - no PostgreSQL: the workload is skipped
        raise SetupError(f"PostgreSQL not reachable at {PG_URL}: {exc}") from None
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def server_env(port: int, db_url: str, workers: int) -> dict[str, str]:
    return {
        "FHIR_HOST": HOST,
        "FHIR_PORT": str(port),
        "FHIR_DATABASE_URL": db_url,
        "FHIR_AUTH": "off",
        "FHIR_WORKERS": str(workers),
        "FHIR_LOG_LEVEL": "warning",
        # `fhir_server` must import even when the project is not pip-installed (e.g. a scratch venv).
        "PYTHONPATH": str(REPO_ROOT),
    }


@contextmanager
def our_server(target: Target) -> Iterator[ServerProcess]:
    reason = unavailable_reason()
    if reason is not None:
        raise SetupError(reason)
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as tmp, database_url(target, Path(tmp)) as db_url:
        port = free_port()
        cmd = [sys.executable, "-m", CLI_MODULE, "serve"]
        env = server_env(port, db_url, target.workers)
        if target.auth:
            env["FHIR_AUTH"] = "smart"
        with serve("fhir-server", cmd, port, "/health", env=env) as server:
            _wait_for_profiles(port)
            _TOKENS[port] = _mint_token(port, db_url) if target.auth else ""
            try:
                yield server
            finally:
                _TOKENS.pop(port, None)


def _wait_for_profiles(port: int, timeout: float = 60.0) -> None:
    """Until /health says the server's background compilation of the profile plans is done: for
    ~2.4 s of CPU after start it competes with the requests, and these workloads measure the steady
    state.  (With several workers, whichever answers; each compiles its own.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("GET", "/health")
            if json.loads(conn.getresponse().read()).get("profiles", "ready") == "ready":
                return
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
        time.sleep(0.1)


# port -> "Bearer ..." of a server started with FHIR_AUTH=smart ("" without authorisation)
_TOKENS: dict[int, str] = {}


def _mint_token(port: int, db_url: str) -> str:
    """A system/*.cruds token signed with the server's own key, read from its database."""
    from fhir_server.auth.services import AuthServices
    from fhir_server.config import Settings as ServerSettings
    from fhir_server.storage.sql.backend import SqlBackend

    backend = SqlBackend(db_url)
    try:
        services = AuthServices.open(backend, ServerSettings(host=HOST, port=port, database_url=db_url))
        token, _ = services.tokens.issue_access(client_id="sandbox", sub="bench", scope="system/*.cruds")
    finally:
        backend.close()
    return f"Bearer {token}"


def _auth_headers(port: int) -> dict[str, str]:
    token = _TOKENS.get(port, "")
    return {"Authorization": token} if token else {}


def create_patient(port: int, run_tag: str) -> str:
    """POST one Patient and return the id the server assigned, taken from its Location header."""
    body = create_body(f"{run_tag}-seed")(0)
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        headers = {"Content-Type": MEDIA_TYPE, "Accept": MEDIA_TYPE, **_auth_headers(port)}
        conn.request("POST", "/fhir/Patient", body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        location = resp.getheader("Location") or ""
    finally:
        conn.close()
    if resp.status != 201:
        raise SetupError(f"POST /fhir/Patient answered {resp.status}, not 201: {payload[:300]!r}")
    match = _LOCATION_ID.search(location)
    if match is None:
        raise SetupError(f"POST /fhir/Patient gave no usable Location header: {location!r}")
    return match.group(1)


def _get_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": MEDIA_TYPE, **_auth_headers(port)})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def run_read(settings: Settings, target: Target = Target()) -> LoadResult:
    with our_server(target) as server:
        patient_id = create_patient(server.port, uuid.uuid4().hex[:8])
        path = f"/fhir/Patient/{patient_id}"
        status = _get_status(server.port, path)
        if status != 200:
            raise SetupError(f"GET {path} answered {status} right after the create")
        return drive(server, spec_for(settings, server.port, path, authorization=_TOKENS.get(server.port, "")),
                     settings)


def run_create(settings: Settings, target: Target = Target()) -> LoadResult:
    with our_server(target) as server:
        # A fresh tag per run keeps identifiers unique even if a database were ever reused.
        body = create_body(uuid.uuid4().hex[:8])
        spec = spec_for(settings, server.port, "/fhir/Patient", method="POST", body=body)
        return drive(server, spec, settings)


SEARCH_SEED = 200
SEARCH_PATH = "/fhir/Patient?_lastUpdated=gt2000-01-01&_count=20"


def run_search(settings: Settings, target: Target = Target()) -> LoadResult:
    """A type search that counts its matches (``total``) and returns a 20-entry searchset page.

    The engine here knows only ``_id`` and ``_lastUpdated``; the search issue brings its own
    workloads.  This one measures Bundle assembly from stored bytes plus a COUNT over the type."""
    with our_server(target) as server:
        tag = uuid.uuid4().hex[:8]
        for i in range(SEARCH_SEED):
            body = create_body(f"{tag}-seed")(i)
            conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
            try:
                conn.request("POST", "/fhir/Patient", body=body, headers={"Content-Type": MEDIA_TYPE})
                resp = conn.getresponse()
                resp.read()
            finally:
                conn.close()
            if resp.status != 201:
                raise SetupError(f"seeding Patients for the search workload: POST answered {resp.status}")
        status = _get_status(server.port, SEARCH_PATH)
        if status != 200:
            raise SetupError(f"GET {SEARCH_PATH} answered {status}")
        return drive(server, spec_for(settings, server.port, SEARCH_PATH), settings)
