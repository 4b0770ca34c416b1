"""Fixtures of the search suite: a server per test module, loaded once with the shared test data.

``world`` is SQLite; ``pg_world`` (test_search_backends.py) is PostgreSQL in a schema of its own,
read from FHIR_TEST_POSTGRES_URL, skipped with a clear message when no PostgreSQL is reachable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fhir_server.app import create_app
from fhir_server.config import Settings
from tests.search.loader import BASE, World, inferno_resources, require_data, small_resources
from tests.storage.conftest import pg_database


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


@pytest.fixture(scope="module")
def pg_world() -> Iterator[World]:
    """PostgreSQL in a fresh schema (dropped afterwards), loaded like ``world``."""
    require_data()
    with pg_database() as url, started_world(url, "postgresql") as w:
        yield w
