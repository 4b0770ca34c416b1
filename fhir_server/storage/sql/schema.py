"""Tables of the SQL backend (one definition for SQLite and PostgreSQL).

``resource`` holds the current version of each resource with an integer ``pid`` that never
changes (search index rows key on it); ``resource_history`` holds every version including the
current one, so vread and history are one indexed lookup.  Bodies are the stamped JSON bytes.
The typed index tables are written in the same transaction as the resource; the search engine
fills them.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (auto-increment, fast lookups).
PK = BigInteger().with_variant(Integer(), "sqlite")

resource = Table(
    "resource",
    metadata,
    Column("pid", PK, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(40), nullable=False),
    Column("lu_ms", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("body", LargeBinary, nullable=True),
    UniqueConstraint("res_type", "res_id", name="uq_resource_type_id"),
    Index("ix_resource_type_lu", "res_type", "lu_ms", "deleted"),
)

resource_history = Table(
    "resource_history",
    metadata,
    Column("hid", PK, primary_key=True, autoincrement=True),
    Column("pid", BigInteger, nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(40), nullable=False),
    Column("lu_ms", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("method", String(8), nullable=False),
    Column("body", LargeBinary, nullable=True),
    # Two writers can never both produce version n of one resource.
    UniqueConstraint("res_type", "res_id", "version", name="uq_history_version"),
    Index("ix_history_type_hid", "res_type", "hid"),
    Index("ix_history_lu", "lu_ms"),
)


def _index_table(name: str, *columns: Column) -> Table:
    return Table(
        name,
        metadata,
        Column("pid", BigInteger, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Index(f"ix_{name}_pid", "pid"),
    )


idx_string = _index_table(
    "idx_string", Column("value_norm", String(256)), Column("value_exact", String(1024)),
)
idx_token = _index_table(
    "idx_token", Column("system", String(512)), Column("code", String(256)), Column("text_norm", String(256)),
)
idx_date = _index_table("idx_date", Column("lo_ms", BigInteger), Column("hi_ms", BigInteger))
idx_number = _index_table("idx_number", Column("lo", Numeric), Column("hi", Numeric))
idx_quantity = _index_table(
    "idx_quantity", Column("system", String(512)), Column("code", String(256)),
    Column("lo", Numeric), Column("hi", Numeric),
)
idx_reference = _index_table(
    "idx_reference", Column("target_type", String(64)), Column("target_id", String(64)), Column("url", String(1024)),
)
idx_uri = _index_table("idx_uri", Column("uri", String(1024)))

Index("ix_idx_token_lookup", idx_token.c.res_type, idx_token.c.param, idx_token.c.code, idx_token.c.system)
Index("ix_idx_string_lookup", idx_string.c.res_type, idx_string.c.param, idx_string.c.value_norm)
Index("ix_idx_date_lookup", idx_date.c.res_type, idx_date.c.param, idx_date.c.lo_ms)
Index("ix_idx_reference_lookup", idx_reference.c.res_type, idx_reference.c.param, idx_reference.c.target_id)
Index("ix_idx_uri_lookup", idx_uri.c.res_type, idx_uri.c.param, idx_uri.c.uri)

INDEX_TABLES = {
    "string": idx_string,
    "token": idx_token,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "reference": idx_reference,
    "uri": idx_uri,
}
