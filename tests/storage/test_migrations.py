"""Alembic migrations produce exactly the schema the code defines, on every SQL backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from fhir_server.storage.sql import migrate
from fhir_server.storage.sql.schema import metadata
from tests.storage.conftest import pg_schema_url


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, metadata))
    finally:
        engine.dispose()


def test_migrations_match_models_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    assert _diff(url) == []
    # idempotent: a second start on an upgraded database changes nothing
    engine = sa.create_engine(url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_migrations_match_models_postgresql(pg_admin: sa.Engine | None) -> None:
    if pg_admin is None:
        pytest.skip("PostgreSQL not reachable (set FHIR_TEST_POSTGRES_URL)")
    schema, url = pg_schema_url(pg_admin)
    try:
        assert _diff(url) == []
    finally:
        with pg_admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


def test_upgrade_from_empty_creates_tables(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/e.db")
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert {"resource", "resource_history", "idx_token", "alembic_version"} <= names
    engine.dispose()
