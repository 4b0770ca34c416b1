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
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
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
    # Pages of one type in pid order (searches without a driving condition, bulk export): without
    # it a rare type was found by scanning the whole table per page (0.45 s a page at 1M rows).
    Index("ix_resource_type_pid", "res_type", "pid"),
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


# Facts about the database itself, by key (``index_version``: see search/extract.py INDEX_VERSION).
server_state = Table(
    "server_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


def _text(length: int) -> String:
    # Byte-order comparison on PostgreSQL, as SQLite's BINARY collation does: prefix searches are
    # ranges (value >= 'abc' AND value < 'abc\U0010ffff') that a plain B-tree index serves.
    return String(length).with_variant(String(length, collation="C"), "postgresql")


def _index_table(name: str, *columns: Column) -> Table:
    return Table(
        name,
        metadata,
        Column("pid", BigInteger, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        *columns,
        Index(f"ix_{name}_pid", "pid", "param"),
    )


idx_string = _index_table("idx_string", Column("value_norm", _text(255)), Column("value_exact", Text))
idx_token = _index_table(
    "idx_token", Column("system", _text(512)), Column("code", _text(512)), Column("text_norm", _text(255)),
)
idx_date = _index_table("idx_date", Column("lo_ms", BigInteger), Column("hi_ms", BigInteger))
idx_number = _index_table("idx_number", Column("lo", Numeric), Column("hi", Numeric))
idx_quantity = _index_table(
    "idx_quantity", Column("system", _text(512)), Column("code", _text(256)), Column("unit", _text(256)),
    Column("lo", Numeric), Column("hi", Numeric),
)
idx_reference = _index_table(
    "idx_reference", Column("target_type", String(64)), Column("target_id", String(64)), Column("url", Text),
)
idx_uri = _index_table("idx_uri", Column("uri", _text(1024)))
idx_composite = _index_table(
    "idx_composite",
    Column("c1_system", _text(512)), Column("c1_code", _text(512)),
    Column("c2_system", _text(512)), Column("c2_code", _text(512)),
    Column("c2_lo", Numeric), Column("c2_hi", Numeric),
    # The third component of a three-part composite (token$number$number: MolecularSequence).
    Column("c3_lo", Numeric), Column("c3_hi", Numeric),
)
# Positions (Location near), in WGS84 degrees.  Binary floats: the distance is computed in floating
# point anyway, and the box prefilter compares against float bounds.
idx_geo = _index_table("idx_geo", Column("lat", Double), Column("lon", Double))

# Lookup indexes end in pid so a parameter test is answered from the index alone (covering);
# measured at 39k resources, patient+category searches otherwise fetched every matching row.
Index("ix_idx_token_lookup", idx_token.c.res_type, idx_token.c.param, idx_token.c.code, idx_token.c.system,
      idx_token.c.pid)
Index("ix_idx_token_text", idx_token.c.res_type, idx_token.c.param, idx_token.c.text_norm, idx_token.c.pid)
Index("ix_idx_string_lookup", idx_string.c.res_type, idx_string.c.param, idx_string.c.value_norm, idx_string.c.pid)
Index("ix_idx_date_lookup", idx_date.c.res_type, idx_date.c.param, idx_date.c.lo_ms, idx_date.c.hi_ms,
      idx_date.c.pid)
Index("ix_idx_number_lookup", idx_number.c.res_type, idx_number.c.param, idx_number.c.lo, idx_number.c.hi,
      idx_number.c.pid)
Index("ix_idx_quantity_lookup", idx_quantity.c.res_type, idx_quantity.c.param, idx_quantity.c.code,
      idx_quantity.c.lo, idx_quantity.c.hi, idx_quantity.c.pid)
Index("ix_idx_reference_lookup", idx_reference.c.res_type, idx_reference.c.param, idx_reference.c.target_id,
      idx_reference.c.target_type, idx_reference.c.pid)
Index("ix_idx_reference_target", idx_reference.c.target_type, idx_reference.c.target_id)
Index("ix_idx_uri_lookup", idx_uri.c.res_type, idx_uri.c.param, idx_uri.c.uri, idx_uri.c.pid)
Index("ix_idx_composite_lookup", idx_composite.c.res_type, idx_composite.c.param, idx_composite.c.c1_code,
      idx_composite.c.c2_code, idx_composite.c.pid)
# Latitude leads: a near search is a latitude range; longitude and pid are read from the index
# too, so the distance test runs on index entries alone (covering).
Index("ix_idx_geo_lookup", idx_geo.c.res_type, idx_geo.c.param, idx_geo.c.lat, idx_geo.c.lon, idx_geo.c.pid)

INDEX_TABLES = {
    "string": idx_string,
    "token": idx_token,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "reference": idx_reference,
    "uri": idx_uri,
    "composite": idx_composite,
    "geo": idx_geo,
}
