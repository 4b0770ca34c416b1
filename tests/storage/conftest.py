"""Backends for the storage contract suite: SQLite file, SQLite in memory, PostgreSQL.

PostgreSQL tests use FHIR_TEST_POSTGRES_URL (default: the local test database) and a schema of
their own per test, so concurrent runs never see each other's data; they skip with a clear message
when no PostgreSQL is reachable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from fhir_server.storage.sql.backend import SqlBackend

PG_URL = os.environ.get("FHIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_engine() -> sa.Engine | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return engine
    except Exception:  # noqa: BLE001 - any failure means: no PostgreSQL here
        return None


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine | None]:
    engine = _pg_engine()
    yield engine
    if engine is not None:
        engine.dispose()


@contextmanager
def pg_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema, dropped afterwards; skips when PostgreSQL is unreachable."""
    admin = _pg_engine()
    if admin is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set FHIR_TEST_POSTGRES_URL)")
    schema, url = pg_schema_url(admin)
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def pg_schema_url(admin: sa.Engine) -> tuple[str, str]:
    schema = "fhirtest_" + uuid.uuid4().hex[:12]
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: sa.Engine | None) -> Iterator[SqlBackend]:
    schema = None
    if request.param == "sqlite-file":
        url = f"sqlite:///{tmp_path}/contract.db"
    elif request.param == "sqlite-memory":
        url = "sqlite:///:memory:"
    else:
        if pg_admin is None:
            pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set FHIR_TEST_POSTGRES_URL)")
        schema, url = pg_schema_url(pg_admin)
    b = SqlBackend(url, pool_size=20, timeout_s=30)
    b.start()
    try:
        yield b
    finally:
        b.close()
        if schema is not None and pg_admin is not None:
            with pg_admin.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
