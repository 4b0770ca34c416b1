"""The SQL backend: one code path for SQLite and PostgreSQL (differences live in dialect.py).

Statements are SQLAlchemy Core, executed through SqlRunner on pooled raw DBAPI connections.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, func, insert, not_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from fhir_server.errors import invalid
from fhir_server.model.instant import format_instant, now_ms
from fhir_server.search.query import Condition, DateRange, SearchQuery
from fhir_server.storage.base import (
    BackendUnavailable,
    HistoryEntry,
    HistoryPage,
    HistoryQuery,
    MultipleMatches,
    Page,
    Stamper,
    StoredResource,
    VersionConflict,
    WriteOutcome,
    WriteRequest,
)
from fhir_server.storage.sql import migrate
from fhir_server.storage.sql.dialect import Dialect, create_engine
from fhir_server.storage.sql.runner import SqlRunner
from fhir_server.storage.sql.schema import INDEX_TABLES, resource, resource_history

# (table kind, row without pid/res_type) pairs for one resource; the search engine supplies it.
Indexer = Callable[[str, dict[str, Any]], list[tuple[str, dict[str, Any]]]]

R = resource.c
H = resource_history.c

_VERSION_COLS = (R.version, R.last_updated, R.lu_ms, R.deleted, R.body)

# Statements used on every request, built once and compiled once per dialect.
_READ = select(*_VERSION_COLS).where(R.res_type == bindparam("rt"), R.res_id == bindparam("id"))
_VREAD = select(H.version, H.last_updated, H.lu_ms, H.deleted, H.body).where(
    H.res_type == bindparam("rt"), H.res_id == bindparam("id"), H.version == bindparam("v")
)
_CURRENT = select(R.pid, *_VERSION_COLS).where(R.res_type == bindparam("rt"), R.res_id == bindparam("id"))
_BY_PID = select(R.res_id, *_VERSION_COLS).where(R.pid == bindparam("pid"))
_INSERT = insert(resource).values(
    {c: bindparam(c) for c in ("res_type", "res_id", "version", "last_updated", "lu_ms", "deleted", "body")}
).returning(R.pid)
_INSERT_HISTORY = insert(resource_history).values(
    {c: bindparam(c) for c in
     ("pid", "res_type", "res_id", "version", "last_updated", "lu_ms", "deleted", "method", "body")}
)
_UPDATE = (
    update(resource)
    .where(R.pid == bindparam("b_pid"))
    .values(
        version=bindparam("version"), last_updated=bindparam("last_updated"), lu_ms=bindparam("lu_ms"),
        deleted=bindparam("deleted"), body=bindparam("body"),
    )
)


def _stored(rt: str, rid: str, row: tuple[Any, ...]) -> StoredResource:
    version, last_updated, lu_ms, deleted, body = row[-5:]
    return StoredResource(rt, rid, int(version), last_updated, int(lu_ms), bool(deleted),
                          bytes(body) if body is not None else None)


def _encode_cursor(key: int) -> str:
    return f"{key:x}"


def _decode_cursor(cursor: str) -> int:
    try:
        return int(cursor, 16)
    except ValueError:
        raise invalid(f"Invalid paging cursor '{cursor}'") from None


def _date_clause(col_lo: Any, col_hi: Any, v: DateRange, now: int) -> ColumnElement[bool]:
    """Match a target range [col_lo, col_hi) against a search range per R4 search.html#prefix."""
    p = v.prefix
    if p == "eq":
        return and_(col_lo >= v.lo, col_hi <= v.hi)
    if p == "ne":
        return or_(col_lo < v.lo, col_hi > v.hi)
    if p == "gt":
        return col_hi > v.hi
    if p == "sa":
        return col_lo >= v.hi
    if p == "lt":
        return col_lo < v.lo
    if p == "eb":
        return col_hi <= v.lo
    if p == "ge":
        return col_hi > v.lo
    if p == "le":
        return col_lo < v.hi
    # ap: within 10% of the distance between the value and now (HAPI's rule), at least the value's range.
    gap = abs(now - v.lo) // 10
    return and_(col_hi > v.lo - gap, col_lo < v.hi + gap)


class SqlBackend:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        timeout_s: float = 30.0,
        indexer: Indexer | None = None,
    ) -> None:
        self.engine = create_engine(url, pool_size=pool_size, timeout_s=timeout_s)
        self.dialect = Dialect(self.engine)
        self.run = SqlRunner(self.engine)
        self.indexer = indexer
        # SQLite reads finish in microseconds without network I/O: cheaper on the event loop than a thread hop.
        self.fast_reads = self.dialect.is_sqlite
        self.parallel_writes = not self.dialect.is_sqlite
        self._tx = threading.local()
        # An in-memory SQLite database is one shared connection (StaticPool): nothing to detach.
        self._own_readers = self.engine.pool.__class__.__name__ != "StaticPool"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Create a fresh schema or upgrade an existing one to the newest migration."""
        from sqlalchemy.exc import OperationalError

        try:
            migrate.upgrade(self.engine)
        except OperationalError as exc:
            raise BackendUnavailable(str(exc.orig)) from exc

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self._conn(write=False) as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            return True
        except BackendUnavailable:
            return False

    # -- connections -------------------------------------------------------------------------
    @contextmanager
    def _conn(self, *, write: bool, snapshot: bool = False) -> Iterator[Any]:
        """A cursor inside a transaction; reuses the open transaction() of this thread if any."""
        current = getattr(self._tx, "cursor", None)
        if current is not None:
            yield current
            return
        lost = (self.run.OperationalError, self.run.InterfaceError)
        try:
            raw = self.engine.raw_connection()
        except Exception as exc:
            raise BackendUnavailable(str(exc)) from exc
        guard = self.dialect.write_guard() if write else None
        try:
            if guard is not None:
                guard.__enter__()
            cur = raw.cursor()
            try:
                if write or snapshot:
                    self.dialect.begin(cur, write=write)
                yield cur
                raw.commit()
            except BaseException:
                # The connection may already be gone; the original error is what matters.
                with suppress(Exception):
                    raw.rollback()
                raise
            finally:
                cur.close()
        except lost as exc:
            raw.invalidate()
            raise BackendUnavailable(str(exc)) from exc
        finally:
            if guard is not None:
                guard.__exit__(None, None, None)
            raw.close()

    @contextmanager
    def transaction(self) -> Iterator[SqlBackend]:
        if getattr(self._tx, "cursor", None) is not None:
            yield self
            return
        with self._conn(write=True) as cur:
            self._tx.cursor = cur
            try:
                yield self
            finally:
                self._tx.cursor = None

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        # A unique-key race (two first writes of one id where no lock serialised them) is resolved
        # by running the operation again, which then sees the winner's row.
        for attempt in range(3):
            try:
                return fn()
            except self.run.IntegrityError:
                if attempt == 2 or getattr(self._tx, "cursor", None) is not None:
                    raise
        raise AssertionError("unreachable")

    # -- reads -------------------------------------------------------------------------------
    def _reader(self) -> Any:
        """This thread's connection for single-statement reads, outside the pool, in autocommit mode.

        A lone SELECT needs no transaction; skipping the pool checkout (and PostgreSQL's pre-ping)
        and the COMMIT turns three round trips into one.  Measured on SQLite: the checkout alone
        cost more than the query."""
        conn = getattr(self._tx, "reader", None)
        if conn is None:
            try:
                fairy = self.engine.raw_connection()
            except Exception as exc:
                raise BackendUnavailable(str(exc)) from exc
            fairy.detach()
            conn = fairy.dbapi_connection
            assert conn is not None
            if not self.dialect.is_sqlite:
                conn.rollback()  # the pool's pre-ping may have opened a transaction
                conn.autocommit = True
            self._tx.reader_fairy = fairy  # keeps the detached connection open
            self._tx.reader = conn
        return conn

    def _drop_reader(self) -> None:
        conn = getattr(self._tx, "reader", None)
        self._tx.reader = self._tx.reader_fairy = None
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def _fetch_one(self, stmt: Any, params: dict[str, Any], key: str) -> tuple[Any, ...] | None:
        """One single-statement read: the hot path of read and vread."""
        if not self._own_readers or getattr(self._tx, "cursor", None) is not None:
            with self._conn(write=False) as cur:
                row: tuple[Any, ...] | None = self.run.execute(cur, stmt, params, key=key).fetchone()
            return row
        sql, compiled = self.run.compile(stmt, key)
        args = self.run.args(compiled, params)
        lost = (self.run.OperationalError, self.run.InterfaceError)
        for attempt in (1, 2):
            try:
                cur = self._reader().cursor()
                try:
                    cur.execute(sql, args)
                    row = cur.fetchone()
                finally:
                    cur.close()
                return row
            except lost as exc:
                # A connection that died while idle is replaced once; a second failure is an outage.
                self._drop_reader()
                if attempt == 2:
                    raise BackendUnavailable(str(exc)) from exc
            except BackendUnavailable:
                raise
            except Exception as exc:
                if isinstance(exc, self.run.DatabaseError):
                    self._drop_reader()
                raise
        raise AssertionError("unreachable")

    def read(self, resource_type: str, id: str) -> StoredResource | None:
        row = self._fetch_one(_READ, {"rt": resource_type, "id": id}, "read")
        return None if row is None else _stored(resource_type, id, row)

    def vread(self, resource_type: str, id: str, version: int) -> StoredResource | None:
        row = self._fetch_one(_VREAD, {"rt": resource_type, "id": id, "v": version}, "vread")
        return None if row is None else _stored(resource_type, id, row)

    # -- writes ------------------------------------------------------------------------------
    def create(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        return self._retrying(lambda: self._create(req, stamp))

    def _create(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        with self._conn(write=True) as cur:
            if req.if_none_exist is not None:
                cond = "&".join(f"{k}={v}" for k, v in sorted(req.if_none_exist.link_params))
                self.dialect.lock_condition(cur, req.resource_type, cond)
                pids = self._match_pids(cur, req.if_none_exist, limit=2)
                if len(pids) > 1:
                    raise MultipleMatches(len(pids))
                if pids:
                    row = self.run.execute(cur, _BY_PID, {"pid": pids[0]}, key="by_pid").fetchone()
                    return WriteOutcome(_stored(req.resource_type, row[0], row), created=False, existing=True)
            rid = req.id or str(uuid.uuid4())
            stored = self._insert_new(cur, req.resource_type, rid, req.resource, stamp, method="POST")
            return WriteOutcome(stored, created=True)

    def _insert_new(
        self, cur: Any, rt: str, rid: str, res: dict[str, Any], stamp: Stamper, *, method: str
    ) -> StoredResource:
        ms = now_ms()
        lu = format_instant(ms)
        body = stamp(res, rid, 1, lu)
        values = {"res_type": rt, "res_id": rid, "version": 1, "last_updated": lu, "lu_ms": ms,
                  "deleted": False, "body": body}
        pid = self.run.execute(cur, _INSERT, values, key="insert").fetchone()[0]
        self._insert_history(cur, pid, values, method)
        self._write_index(cur, pid, rt, res)
        return StoredResource(rt, rid, 1, lu, ms, False, body)

    def _insert_history(self, cur: Any, pid: int, values: dict[str, Any], method: str) -> None:
        self.run.execute(cur, _INSERT_HISTORY, {**values, "pid": pid, "method": method}, key="insert_history")

    def _write_index(self, cur: Any, pid: int, rt: str, res: dict[str, Any] | None) -> None:
        if self.indexer is None:
            return
        for kind, table in INDEX_TABLES.items():
            self.run.execute(cur, delete(table).where(table.c.pid == bindparam("pid")), {"pid": pid},
                             key=f"unindex_{kind}")
        if res is None:
            return
        for kind, row in self.indexer(rt, res):
            table = INDEX_TABLES[kind]
            self.run.execute(cur, insert(table), {"pid": pid, "res_type": rt, **row}, key=f"index_{kind}")

    def _current_for_write(self, cur: Any, rt: str, rid: str) -> tuple[Any, ...] | None:
        self.dialect.lock_resource(cur, rt, rid)
        stmt = _CURRENT.with_for_update() if self.dialect.for_update else _CURRENT
        row: tuple[Any, ...] | None = self.run.execute(cur, stmt, {"rt": rt, "id": rid}, key="current").fetchone()
        return row

    def _new_version(
        self, cur: Any, row: tuple[Any, ...], rt: str, rid: str, body_of: Callable[[int, str], bytes | None],
        method: str, res: dict[str, Any] | None,
    ) -> StoredResource:
        pid, version, lu_ms = row[0], int(row[1]) + 1, int(row[3])
        ms = max(now_ms(), lu_ms + 1)
        lu = format_instant(ms)
        body = body_of(version, lu)
        deleted = body is None
        values = {"version": version, "last_updated": lu, "lu_ms": ms, "deleted": deleted, "body": body}
        self.run.execute(cur, _UPDATE, {**values, "b_pid": pid}, key="update")
        self._insert_history(cur, pid, {**values, "res_type": rt, "res_id": rid}, method)
        self._write_index(cur, pid, rt, res)
        return StoredResource(rt, rid, version, lu, ms, deleted, body)

    def update(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        return self._retrying(lambda: self._update(req, stamp))

    def _update(self, req: WriteRequest, stamp: Stamper) -> WriteOutcome:
        assert req.id is not None
        rt, rid = req.resource_type, req.id
        with self._conn(write=True) as cur:
            row = self._current_for_write(cur, rt, rid)
            if row is None:
                if req.if_match is not None:
                    raise VersionConflict(None)
                return WriteOutcome(self._insert_new(cur, rt, rid, req.resource, stamp, method="PUT"), created=True)
            if req.if_match is not None and req.if_match != int(row[1]):
                raise VersionConflict(int(row[1]))
            stored = self._new_version(
                cur, row, rt, rid, lambda v, lu: stamp(req.resource, rid, v, lu), "PUT", req.resource
            )
            return WriteOutcome(stored, created=bool(row[4]))

    def delete(self, resource_type: str, id: str) -> StoredResource | None:
        return self._retrying(lambda: self._delete(resource_type, id))

    def _delete(self, rt: str, rid: str) -> StoredResource | None:
        with self._conn(write=True) as cur:
            row = self._current_for_write(cur, rt, rid)
            if row is None or row[4]:
                return None
            return self._new_version(cur, row, rt, rid, lambda v, lu: None, "DELETE", None)

    # -- history -----------------------------------------------------------------------------
    def history(self, query: HistoryQuery) -> HistoryPage:
        where: list[ColumnElement[bool]] = []
        if query.resource_type is not None:
            where.append(H.res_type == query.resource_type)
        if query.id is not None:
            where.append(H.res_id == query.id)
        if query.since_ms is not None:
            where.append(H.lu_ms >= query.since_ms)
        if query.at_ms is not None:
            lo, hi = query.at_ms
            h2 = resource_history.alias("h2")
            # Current at some point of [lo, hi): written before hi and not replaced by lo.
            where.append(H.lu_ms < hi)
            where.append(
                not_(
                    exists().where(
                        h2.c.res_type == H.res_type,
                        h2.c.res_id == H.res_id,
                        h2.c.version == H.version + 1,
                        h2.c.lu_ms <= lo,
                    )
                )
            )
        page_where = list(where)
        if query.cursor:
            page_where.append(H.hid < _decode_cursor(query.cursor))
        stmt = (
            select(H.hid, H.res_type, H.res_id, H.method, H.version, H.last_updated, H.lu_ms, H.deleted, H.body)
            .where(*page_where)
            .order_by(H.hid.desc())
            .limit(query.count + 1)
        )
        with self._conn(write=False, snapshot=True) as cur:
            rows = self.run.execute(cur, stmt).fetchall() if query.count > 0 else []
            total = self.run.execute(cur, select(func.count()).select_from(resource_history).where(*where)).fetchone()[0]
        more = len(rows) > query.count
        rows = rows[: query.count]
        items = [HistoryEntry(_stored(r[1], r[2], r), r[3]) for r in rows]
        return HistoryPage(items, int(total), _encode_cursor(rows[-1][0]) if more and rows else None)

    # -- search ------------------------------------------------------------------------------
    def _where(self, query: SearchQuery) -> list[ColumnElement[bool]]:
        types = query.resource_types
        where: list[ColumnElement[bool]] = [R.deleted.is_(False)]
        where.append(R.res_type == types[0] if len(types) == 1 else R.res_type.in_(types))
        now = now_ms()
        for cond in query.conditions:
            where.append(self._condition(cond, now))
        return where

    def _condition(self, cond: Condition, now: int) -> ColumnElement[bool]:
        if cond.name == "_id":
            return R.res_id.in_([str(v) for v in cond.values])
        if cond.name == "_lastUpdated":
            return or_(*[_date_clause(R.lu_ms, R.lu_ms + 1, v, now) for v in cond.values])
        raise invalid(f"Search parameter '{cond.name}' is not supported by this backend")

    def _match_pids(self, cur: Any, query: SearchQuery, *, limit: int) -> list[int]:
        stmt = select(R.pid).where(*self._where(query)).order_by(R.pid).limit(limit)
        return [r[0] for r in self.run.execute(cur, stmt).fetchall()]

    def search(self, query: SearchQuery) -> Page:
        where = self._where(query)
        with self._conn(write=False, snapshot=True) as cur:
            total: int | None = None
            if query.total != "none" or query.summary_count:
                total = int(self.run.execute(cur, select(func.count()).select_from(resource).where(*where))
                            .fetchone()[0])
            if query.summary_count or query.count == 0:
                return Page([], total, None)
            page_where = list(where)
            if query.cursor:
                page_where.append(R.pid > _decode_cursor(query.cursor))
            stmt = (
                select(R.pid, R.res_type, R.res_id, *_VERSION_COLS)
                .where(*page_where)
                .order_by(R.pid)
                .limit(query.count + 1)
            )
            rows = self.run.execute(cur, stmt).fetchall()
        more = len(rows) > query.count
        rows = rows[: query.count]
        items = [_stored(r[1], r[2], r) for r in rows]
        return Page(items, total, _encode_cursor(rows[-1][0]) if more and rows else None)

    def iter_all(self, resource_type: str | None = None) -> Iterator[StoredResource]:
        last = 0
        while True:
            stmt = select(R.pid, R.res_type, R.res_id, *_VERSION_COLS).where(R.deleted.is_(False), R.pid > last)
            if resource_type is not None:
                stmt = stmt.where(R.res_type == resource_type)
            with self._conn(write=False) as cur:
                rows = self.run.execute(cur, stmt.order_by(R.pid).limit(1000)).fetchall()
            if not rows:
                return
            for r in rows:
                yield _stored(r[1], r[2], r)
            last = rows[-1][0]
