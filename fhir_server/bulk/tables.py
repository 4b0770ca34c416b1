"""Tables of bulk export: jobs and their NDJSON output, on the same MetaData as the FHIR tables.

Jobs and files live in the database so that any worker can answer a status poll, serve a file,
or take over a job whose worker died (its lease runs out).  Output is stored in chunks of at most
about a megabyte, written as the export goes and streamed back on download, so neither side ever
holds a whole file in memory.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from fhir_server.storage.sql.schema import metadata

export_job = Table(
    "export_job",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # queued | running | done | failed | cancelled
    Column("kind", String(16), nullable=False),  # system | patient | group
    Column("group_id", String(64), nullable=True),
    Column("params", Text, nullable=False),  # JSON: types, since, type filters, patients, format
    Column("request_url", Text, nullable=False),
    Column("owner", String(128), nullable=True),  # client id of the kick-off (None: no authorisation)
    Column("principal", Text, nullable=True),  # JSON: what the kick-off token allowed
    Column("transaction_time", String(40), nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("started_ms", BigInteger, nullable=True),
    Column("finished_ms", BigInteger, nullable=True),
    Column("expires_ms", BigInteger, nullable=False),
    Column("progress", String(255), nullable=True),
    Column("error", Text, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_ms", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_export_job_status", "status", "created_ms"),
)

export_file = Table(
    "export_file",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("job_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),  # order in the manifest
    Column("resource_type", String(64), nullable=False),
    Column("kind", String(8), nullable=False),  # output | error
    Column("count", Integer, nullable=False),
    Column("size", BigInteger, nullable=False),
    Index("ix_export_file_job", "job_id", "seq"),
)

export_chunk = Table(
    "export_chunk",
    metadata,
    Column("file_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("file_id", "seq", name="pk_export_chunk"),
)
