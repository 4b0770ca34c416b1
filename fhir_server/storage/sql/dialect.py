"""Everything that differs between SQLite and PostgreSQL, in one place."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool

from fhir_server.storage.sql.geo import register_sqlite


def create_engine(url: str, *, pool_size: int, timeout_s: float) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        database = u.database or ""
        memory = database in ("", ":memory:") or "mode=memory" in str(u)
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": timeout_s}}
        if memory:
            # One shared connection, or every pool connection would see its own empty database.
            kwargs["poolclass"] = StaticPool
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
        engine = sa_create_engine(url, **kwargs)
        _configure_sqlite(engine, memory=memory, busy_ms=int(timeout_s * 1000))
        return engine
    engine = sa_create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=timeout_s,
        # No server-side prepared statements: after five executions PostgreSQL may switch a
        # prepared search to a generic plan that ignores the values; measured on the 100-patient
        # set, Observation?patient+category went from 77 ms to 13 ms with custom plans.
        connect_args={"connect_timeout": max(1, int(timeout_s)), "prepare_threshold": None}
        if u.get_backend_name() == "postgresql" else {},
    )
    return engine


def _configure_sqlite(engine: Engine, *, memory: bool, busy_ms: int) -> None:
    # Raw sqlite3 cursors bypass SQLAlchemy's bind processors.  SQLite keeps NUMERIC as REAL, and
    # a Decimal bound as text would compare as text against numeric expressions: bind floats.
    sqlite3.register_adapter(Decimal, float)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE can be issued.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (SIGKILL); only an OS crash may lose the tail.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()
        register_sqlite(dbapi_conn)



class Dialect:
    """Per-database behaviour used by the SQL backend."""

    def __init__(self, engine: Engine) -> None:
        self.name = engine.dialect.name
        self.is_sqlite = self.name == "sqlite"
        # SQLite allows one writer per database; queueing writers of this process on a lock is
        # fairer and cheaper than letting them spin in the busy handler.
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._namespace: str | None = None  # PostgreSQL schema that scopes the advisory locks
        self._busy_ms: int | None = None  # SQLite's busy timeout, read from the first connection asked

    @contextmanager
    def write_guard(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        with self._write_lock:
            yield

    def try_write_guard(self) -> bool:
        """Take this process's write lock if it is free (True); release it with ``release_write_guard``."""
        return self._write_lock is None or self._write_lock.acquire(blocking=False)

    def release_write_guard(self) -> None:
        if self._write_lock is not None:
            self._write_lock.release()

    def try_begin_write(self, cursor: Any) -> bool:
        """BEGIN IMMEDIATE on SQLite without waiting: False when another connection (of this or
        another process) holds the write lock or the log is being reset."""
        if self._busy_ms is None:  # every connection gets the same one (_configure_sqlite)
            cursor.execute("PRAGMA busy_timeout")
            self._busy_ms = int(cursor.fetchone()[0])
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            raise
        finally:
            cursor.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        return True

    def begin(self, cursor: Any, *, write: bool) -> None:
        """Open a transaction on a raw connection.

        SQLite connections run in autocommit mode (isolation_level=None) so that writers can take
        the write lock up front with BEGIN IMMEDIATE; a deferred upgrade could fail with
        SQLITE_BUSY that the busy timeout cannot resolve.  psycopg opens transactions implicitly."""
        if self.is_sqlite:
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def lock_condition(self, cursor: Any, resource_type: str, condition: str) -> None:
        """Serialise writers that evaluate the same condition (conditional create/update).

        SQLite writers are already serialised by BEGIN IMMEDIATE.  On PostgreSQL a
        transaction-scoped advisory lock on the condition's hash makes the search-then-insert
        atomic for every process and every node sharing the database."""
        if self.is_sqlite:
            return
        if self._namespace is None:
            # Advisory locks are per database, not per schema: two FHIR stores in two schemas of
            # one database must not wait for (or deadlock with) each other's locks.
            cursor.execute("SELECT current_schema()")
            self._namespace = str(cursor.fetchone()[0])
        digest = hashlib.blake2b(f"{self._namespace}:{resource_type}?{condition}".encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "big", signed=True)
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    def lock_resource(self, cursor: Any, resource_type: str, id: str) -> None:
        """Serialise writers of one resource id, including the first create of a client id."""
        self.lock_condition(cursor, resource_type, "_id=" + id)

    @property
    def for_update(self) -> bool:
        return not self.is_sqlite
