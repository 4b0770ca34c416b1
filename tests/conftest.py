"""Fixtures shared by every test directory."""

import os

# Tests of everything but authorisation run the API open, as FHIR_AUTH=off does; the SMART tests
# ask for FHIR_AUTH=smart explicitly (Settings(auth="smart")).  Server processes inherit this.
os.environ.setdefault("FHIR_AUTH", "off")

from tests.storage.conftest import pg_admin  # noqa: E402, F401 - the PostgreSQL admin engine fixture
