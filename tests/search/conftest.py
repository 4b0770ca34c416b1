"""Fixtures of the search suite: a server per test module, loaded once with the shared test data.

``world`` is SQLite; ``pg_world`` (test_search_backends.py) is PostgreSQL in a schema of its own,
read from FHIR_TEST_POSTGRES_URL, skipped with a clear message when no PostgreSQL is reachable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.search.loader import BASE, World, inferno_resources, require_data, small_resources

PG_URL = os.environ.get("FHIR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def started_world(database_url: str, name: str, *, small: bool = True) -> Iterator[World]:
    """A started server on ``database_url``, loaded with the Inferno data (and the small Synthea set)."""
    require_data()
    settings = Settings(database_url=database_url, base_url=BASE)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        world = World(client, name)
        world.load(inferno_resources())
        if small:
            world.load(small_resources())
        yield world


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """SQLite, loaded once per test module; tests that create resources do so through it.

    A module with ``LOAD_SMALL = False`` gets the Inferno data only.  With
    FHIR_SEARCH_TESTS_BACKEND=postgresql every module runs on PostgreSQL instead.
    """
    small = getattr(request.module, "LOAD_SMALL", True)
    if os.environ.get("FHIR_SEARCH_TESTS_BACKEND") == "postgresql":
        with pg_database() as url, started_world(url, "postgresql", small=small) as w:
            yield w
        return
    tmp: Path = tmp_path_factory.mktemp("search")
    with started_world(f"sqlite:///{tmp}/s.db", "sqlite", small=small) as w:
        yield w


def _pg_admin() -> sa.Engine | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return engine
    except Exception:  # noqa: BLE001 - any failure means: no PostgreSQL here
        return None


@contextmanager
def pg_database() -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema, dropped afterwards; skips when PostgreSQL is unreachable."""
    admin = _pg_admin()
    if admin is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set FHIR_TEST_POSTGRES_URL)")
    schema = "fhirsearch_" + uuid.uuid4().hex[:12]
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(scope="module")
def pg_world() -> Iterator[World]:
    """PostgreSQL in a fresh schema (dropped afterwards), loaded like ``world``."""
    require_data()
    with pg_database() as url, started_world(url, "postgresql") as w:
        yield w
