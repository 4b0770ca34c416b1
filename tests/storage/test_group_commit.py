"""Group commit on SQLite: creates merged into one statement per table, written on the event loop
when the database is free and by the writer thread when it is not.

The committer is exercised through its public calls (``submit``/``submit_async``) on real SQLite
files; every operation submitted in one loop iteration joins one group, which makes the merging
deterministic without sleeps.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_server.interactions.common import stamp
from fhir_server.search.extract import Indexer
from fhir_server.storage.base import HistoryQuery, WriteRequest
from fhir_server.storage.sql.backend import SqlBackend
from fhir_server.storage.sql.group_commit import GroupCommitter

BASE = "http://testserver/fhir"


# -- the committer alone, on a one-table database ----------------------------------------------


class _Db:
    """A SQLite file with a UNIQUE column, and the callables a GroupCommitter needs."""

    def __init__(self, path: Path, *, free: bool = True) -> None:
        self.path = path
        self.free = free  # try_run_batch finds the database free
        self.cur: Any = None
        self.batches: list[tuple[str, str]] = []  # (thread name, "loop" | "thread")
        self.together: list[list[str]] = []
        self.alone: list[str] = []
        setup = sqlite3.connect(path)
        setup.execute("CREATE TABLE t (v TEXT UNIQUE)")
        setup.execute("INSERT INTO t VALUES ('taken')")
        setup.commit()
        setup.close()

    def _transaction(self, body: Callable[[Any], None], how: str) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.cur = conn.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
            body(self.cur)
            self.cur.execute("COMMIT")
            self.batches.append((threading.current_thread().name, how))
        finally:
            conn.close()

    def run_batch(self, body: Callable[[Any], None]) -> None:
        self._transaction(body, "thread")

    def try_run_batch(self, body: Callable[[Any], None]) -> bool:
        if not self.free:
            return False
        self._transaction(body, "loop")
        return True

    def run_together(self, values: list[str]) -> list[str]:
        self.together.append(list(values))
        self.cur.executemany("INSERT INTO t VALUES (?)", [(v,) for v in values])
        return [f"ok:{v}" for v in values]

    def op(self, value: str) -> Callable[[], str]:
        def alone() -> str:
            self.alone.append(value)
            self.cur.execute("INSERT INTO t VALUES (?)", (value,))
            return f"alone:{value}"

        return alone

    def stored(self) -> list[str]:
        conn = sqlite3.connect(self.path)
        try:
            return sorted(v for (v,) in conn.execute("SELECT v FROM t"))
        finally:
            conn.close()


def _committer(db: _Db, max_batch: int = 64) -> GroupCommitter:
    return GroupCommitter(db.run_batch, db.try_run_batch, db.run_together, max_batch=max_batch)


def _submit_all(db: _Db, values: list[str], max_batch: int = 64) -> list[Any]:
    """Submit every value in one loop iteration from a new committer; the results, in order."""
    committer = _committer(db, max_batch)

    async def main() -> list[Any]:
        futures = [committer.submit_async(db.op(v), v) for v in values]
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        return asyncio.run(main())
    finally:
        committer.close()


def test_one_iteration_is_one_group_written_together_on_the_loop(tmp_path: Path) -> None:
    db = _Db(tmp_path / "t.db")
    results = _submit_all(db, ["a", "b", "c"])
    assert results == ["ok:a", "ok:b", "ok:c"]
    assert db.together == [["a", "b", "c"]]
    assert db.alone == []
    assert db.batches == [(threading.main_thread().name, "loop")]
    assert db.stored() == ["a", "b", "c", "taken"]


def test_a_failing_member_fails_alone_and_the_others_commit(tmp_path: Path) -> None:
    db = _Db(tmp_path / "t.db")
    results = _submit_all(db, ["a", "taken", "b"])
    assert results[0] == "alone:a" and results[2] == "alone:b"
    assert isinstance(results[1], sqlite3.IntegrityError)
    # The merged insert was tried first, rolled back, then each ran on its own.
    assert db.together == [["a", "taken", "b"]]
    assert db.alone == ["a", "taken", "b"]
    assert db.stored() == ["a", "b", "taken"]


def test_a_busy_database_sends_the_group_to_the_writer_thread(tmp_path: Path) -> None:
    db = _Db(tmp_path / "t.db", free=False)
    results = _submit_all(db, ["a", "b"])
    assert results == ["ok:a", "ok:b"]
    assert [how for _, how in db.batches] == ["thread"]
    assert db.batches[0][0] == "fhir-group-commit"
    assert db.stored() == ["a", "b", "taken"]


def test_groups_are_capped_and_every_member_is_answered(tmp_path: Path) -> None:
    db = _Db(tmp_path / "t.db")
    values = [f"v{i}" for i in range(10)]
    results = _submit_all(db, values, max_batch=4)
    assert results == [f"ok:{v}" for v in values]
    assert [len(g) for g in db.together] == [4, 4, 2]
    assert db.stored() == sorted([*values, "taken"])


def test_thread_submissions_are_merged_too(tmp_path: Path) -> None:
    db = _Db(tmp_path / "t.db")
    committer = _committer(db)
    start = threading.Barrier(8)
    out: dict[str, Any] = {}

    def worker(v: str) -> None:
        start.wait()
        out[v] = committer.submit(db.op(v), v)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        committer.close()
    # A group of one runs alone; every caller gets its own result either way.
    assert set(out) == {f"w{i}" for i in range(8)}
    assert all(result in (f"ok:{v}", f"alone:{v}") for v, result in out.items()), out
    assert all(how == "thread" for _, how in db.batches)
    assert sum(len(g) for g in db.together) + len(db.alone) == 8
    assert db.stored() == sorted([*(f"w{i}" for i in range(8)), "taken"])


# -- the SQL backend ---------------------------------------------------------------------------


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqlBackend]:
    b = SqlBackend(f"sqlite:///{tmp_path}/fhir.db", pool_size=8, timeout_s=30, indexer=Indexer(BASE))
    b.start()
    try:
        yield b
    finally:
        b.close()


def _patient(n: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:test", "value": f"id-{n}"}],
        "name": [{"family": f"Family{n}", "given": ["Ann", f"G{n}"]}],
        "gender": "female" if n % 2 else "male",
        "birthDate": f"19{50 + n % 40}-01-0{1 + n % 9}",
        "address": [{"city": "Everett", "postalCode": f"0{n:04d}"}],
    }


def _index_rows(b: SqlBackend) -> list[tuple[Any, ...]]:
    """Every index row, with the pid replaced by the resource's id (pids differ between databases)."""
    conn = sqlite3.connect(str(b.engine.url.database))
    try:
        out: list[tuple[Any, ...]] = []
        for table in ("idx_string", "idx_token", "idx_date"):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] != "pid"]
            sql = (f"SELECT r.res_id, {', '.join('i.' + c for c in cols)} FROM {table} i "
                   "JOIN resource r ON r.pid = i.pid")
            out += [(table, *row) for row in conn.execute(sql)]
        return sorted(out, key=repr)
    finally:
        conn.close()


def test_merged_creates_write_what_creates_one_by_one_write(backend: SqlBackend, tmp_path: Path) -> None:
    merged_calls: list[int] = []
    original = backend._create_together

    def spy(items: list[Any]) -> list[Any]:
        merged_calls.append(len(items))
        return original(items)

    backend._create_together = spy  # type: ignore[method-assign]
    assert backend._group is not None
    backend._group._run_together = spy

    async def main() -> list[Any]:
        return await asyncio.gather(*(backend.create_async(WriteRequest("Patient", _patient(n)), stamp)
                                      for n in range(12)))

    outcomes = asyncio.run(main())
    assert merged_calls == [12]
    ids = [o.resource.id for o in outcomes]
    assert len(set(ids)) == 12 and all(o.created for o in outcomes)

    # The same resources, one create at a time from a thread, in a database of their own.
    single = SqlBackend(f"sqlite:///{tmp_path}/single.db", pool_size=4, timeout_s=30, indexer=Indexer(BASE))
    single.start()
    try:
        for n, rid in enumerate(ids):
            single.update(WriteRequest("Patient", {**_patient(n), "id": rid}, id=rid), stamp)
        assert _index_rows(backend) == _index_rows(single)
        assert len(_index_rows(backend)) > 12 * 10
    finally:
        single.close()

    for n, outcome in enumerate(outcomes):
        stored = backend.read("Patient", outcome.resource.id)
        assert stored is not None and stored.version == 1 and stored.body == outcome.resource.body
        assert f'"family":"Family{n}"'.encode() in stored.body
        assert backend.vread("Patient", outcome.resource.id, 1) == stored
        page = backend.history(HistoryQuery(resource_type="Patient", id=outcome.resource.id, count=10))
        assert [(e.method, e.resource.version) for e in page.items] == [("POST", 1)]


def test_the_loop_is_not_blocked_while_another_connection_writes(backend: SqlBackend) -> None:
    """Another connection holds SQLite's write lock: the creates wait for it in the writer thread,
    and the event loop keeps serving reads meanwhile."""
    first = backend.create(WriteRequest("Patient", _patient(0)), stamp).resource
    blocker = sqlite3.connect(str(backend.engine.url.database), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    released = False

    async def main() -> tuple[list[Any], bool]:
        nonlocal released
        tasks = [asyncio.ensure_future(backend.create_async(WriteRequest("Patient", _patient(n)), stamp))
                 for n in range(1, 6)]
        await asyncio.sleep(0.3)
        pending = not any(t.done() for t in tasks)
        # A read on the loop answers while the creates wait for the lock.
        assert backend.read("Patient", first.id) is not None
        blocker.execute("COMMIT")
        released = True
        return await asyncio.wait_for(asyncio.gather(*tasks), 30), pending

    try:
        outcomes, pending = asyncio.run(main())
    finally:
        if not released:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert pending, "the creates finished while another connection held the write lock"
    for o in outcomes:
        assert o.created and backend.read("Patient", o.resource.id) is not None


def test_the_loop_is_not_blocked_by_a_transaction_of_another_thread(backend: SqlBackend) -> None:
    """A transaction (a Bundle, say) holds this process's write lock in a worker thread."""
    inside = threading.Event()
    finish = threading.Event()

    def transaction() -> None:
        with backend.transaction() as tx:
            tx.create(WriteRequest("Patient", _patient(100)), stamp)
            inside.set()
            finish.wait(30)

    worker = threading.Thread(target=transaction)
    worker.start()
    assert inside.wait(30)

    async def main() -> tuple[list[Any], bool]:
        tasks = [asyncio.ensure_future(backend.create_async(WriteRequest("Patient", _patient(n)), stamp))
                 for n in range(3)]
        await asyncio.sleep(0.3)
        pending = not any(t.done() for t in tasks)
        finish.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 30), pending

    try:
        outcomes, pending = asyncio.run(main())
    finally:
        finish.set()
        worker.join(30)
    assert pending
    assert all(o.created and backend.read("Patient", o.resource.id) for o in outcomes)


def test_updates_of_one_resource_in_one_group_make_consecutive_versions(backend: SqlBackend) -> None:
    """PUTs of one id that share a group run one after the other: no version is lost or doubled."""
    async def main() -> list[Any]:
        return await asyncio.gather(*(backend.update_async(
            WriteRequest("Patient", {**_patient(n), "id": "same"}, id="same"), stamp) for n in range(10)))

    outcomes = asyncio.run(main())
    assert [o.resource.version for o in outcomes] == list(range(1, 11))
    assert [o.created for o in outcomes] == [True] + [False] * 9
    current = backend.read("Patient", "same")
    assert current is not None and current.version == 10 and current.body == outcomes[-1].resource.body
    page = backend.history(HistoryQuery(resource_type="Patient", id="same", count=20))
    assert [(e.method, e.resource.version) for e in page.items] == [("PUT", v) for v in range(10, 0, -1)]
    # The index holds the last version's values only.
    rows = [r for r in _index_rows(backend) if r[0] == "idx_token" and r[3] == "identifier"]
    assert [r[5] for r in rows] == ["id-9"]
