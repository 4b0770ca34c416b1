"""Transactions for the small side tables (OAuth, bulk-export jobs) next to the FHIR data.

Their traffic is light, so they use SQLAlchemy connections as they are; the one subtlety is
SQLite, whose engine here runs in autocommit mode: a transaction must be opened explicitly, and
with BEGIN IMMEDIATE, so that a read-then-write cannot fail half way on a busy database.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import Connection, Engine
from sqlalchemy.pool import StaticPool


class SideTables:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # One writer per SQLite database: queue this process's writers on a lock rather than in
        # the busy handler.  An in-memory database is one shared connection, so reads queue too.
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._shared_connection = isinstance(engine.pool, StaticPool)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self._write_lock or nullcontext(), self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
            conn.commit()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        guard = self._write_lock if self._shared_connection and self._write_lock else nullcontext()
        with guard, self.engine.connect() as conn:
            yield conn
