"""The index version a database was built with (server_state): a new database records the
extraction's INDEX_VERSION; a server that finds resources indexed by another version (or before
versions were recorded) warns at start until `fhir-server reindex` has rebuilt the rows."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from fhir_server.interactions.common import stamp
from fhir_server.search.extract import INDEX_VERSION, Indexer
from fhir_server.storage.base import WriteRequest
from fhir_server.storage.sql.backend import SqlBackend
from tests.storage.conftest import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/v.db"
        return
    with pg_database() as url:
        yield url


@contextmanager
def started(url: str) -> Iterator[SqlBackend]:
    backend = SqlBackend(url, pool_size=4, timeout_s=30, indexer=Indexer("http://example.org/fhir"))
    backend.start()
    try:
        yield backend
    finally:
        backend.close()


def stored_version(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT value FROM server_state WHERE key = 'index_version'")).scalar()
    finally:
        engine.dispose()


def set_version(url: str, value: str | None) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM server_state WHERE key = 'index_version'"))
            if value is not None:
                conn.execute(sa.text("INSERT INTO server_state (key, value) VALUES ('index_version', :v)"), {"v": value})
    finally:
        engine.dispose()


def stale_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "fhir-server reindex" in r.getMessage()]


def test_a_new_database_records_the_version_and_a_restart_is_quiet(
        database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with started(database_url) as b:
        assert not b.index_stale
        b.create(WriteRequest("Patient", {"resourceType": "Patient", "gender": "male"}), stamp)
    assert stored_version(database_url) == str(INDEX_VERSION)
    with started(database_url) as b:
        assert not b.index_stale
    assert stale_warnings(caplog) == []


@pytest.mark.parametrize("found", [None, "1", str(INDEX_VERSION + 1)])
def test_resources_indexed_by_another_version_warn_until_reindexed(
        database_url: str, caplog: pytest.LogCaptureFixture, found: str | None) -> None:
    caplog.set_level(logging.WARNING)
    with started(database_url) as b:
        b.create(WriteRequest("Patient", {"resourceType": "Patient", "gender": "male"}), stamp)
    set_version(database_url, found)  # None: a database indexed before versions were recorded
    with started(database_url) as b:
        assert b.index_stale
        (message,) = stale_warnings(caplog)
        assert f"version {INDEX_VERSION}" in message
        assert b.reindex("Patient") == 1  # one type rebuilt is not the whole index
        assert b.index_stale and stored_version(database_url) == found
        assert b.reindex() == 1
        assert not b.index_stale
    assert stored_version(database_url) == str(INDEX_VERSION)
    caplog.clear()
    with started(database_url) as b:
        assert not b.index_stale
    assert stale_warnings(caplog) == []


def test_an_empty_database_without_a_version_simply_records_it(database_url: str) -> None:
    with started(database_url):
        pass
    set_version(database_url, None)
    with started(database_url) as b:
        assert not b.index_stale
    assert stored_version(database_url) == str(INDEX_VERSION)
