"""Fixtures shared by every test directory."""

from tests.storage.conftest import pg_admin  # noqa: F401 - the PostgreSQL admin engine fixture
