"""Alembic environment: always run with a connection handed in by fhir_server.storage.sql.migrate."""

from __future__ import annotations

from alembic import context

import fhir_server.auth.tables  # noqa: F401 - the OAuth tables share the metadata
import fhir_server.bulk.tables  # noqa: F401 - so do the bulk export tables
from fhir_server.storage.sql.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
