"""The storage contract: every backend must pass every test here."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest

from fhir_server.interactions.common import stamp
from fhir_server.search.parse import parse_search
from fhir_server.storage.base import (
    HistoryQuery,
    MultipleMatches,
    VersionConflict,
    WriteRequest,
)
from fhir_server.storage.sql.backend import SqlBackend


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **extra}


def q(params: list[tuple[str, str]], rt: str = "Patient", count: int = 100):  # type: ignore[no-untyped-def]
    return parse_search([rt], params, default_count=count, max_count=1000)


def test_create_read_vread(backend: SqlBackend) -> None:
    out = backend.create(WriteRequest("Patient", patient(gender="male")), stamp)
    assert out.created and not out.existing
    s = out.resource
    assert s.version == 1 and not s.deleted
    body = orjson.loads(s.body or b"")
    assert body["id"] == s.id and body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"] == s.last_updated
    read = backend.read("Patient", s.id)
    assert read is not None and read.body == s.body and read.version == 1
    assert backend.vread("Patient", s.id, 1) == read
    assert backend.vread("Patient", s.id, 2) is None
    assert backend.read("Patient", "nope") is None
    assert backend.read("Observation", s.id) is None


def test_update_versions_and_if_match(backend: SqlBackend) -> None:
    s = backend.create(WriteRequest("Patient", patient()), stamp).resource
    u = backend.update(WriteRequest("Patient", patient(id=s.id, active=True), id=s.id, if_match=1), stamp)
    assert not u.created and u.resource.version == 2
    assert u.resource.last_updated_ms > s.last_updated_ms
    with pytest.raises(VersionConflict) as exc:
        backend.update(WriteRequest("Patient", patient(id=s.id), id=s.id, if_match=1), stamp)
    assert exc.value.current == 2
    v1 = backend.vread("Patient", s.id, 1)
    assert v1 is not None and b'"active"' not in (v1.body or b"")
    created = backend.update(WriteRequest("Patient", patient(id="client-1"), id="client-1"), stamp)
    assert created.created and created.resource.version == 1
    with pytest.raises(VersionConflict):
        backend.update(WriteRequest("Patient", patient(id="client-2"), id="client-2", if_match=1), stamp)


def test_delete_and_history(backend: SqlBackend) -> None:
    s = backend.create(WriteRequest("Patient", patient()), stamp).resource
    backend.update(WriteRequest("Patient", patient(id=s.id, active=False), id=s.id), stamp)
    d = backend.delete("Patient", s.id)
    assert d is not None and d.deleted and d.version == 3 and d.body is None
    assert backend.delete("Patient", s.id) is None
    assert backend.delete("Patient", "never") is None
    cur = backend.read("Patient", s.id)
    assert cur is not None and cur.deleted
    page = backend.history(HistoryQuery("Patient", s.id, count=10))
    assert [(h.method, h.resource.version) for h in page.items] == [("DELETE", 3), ("PUT", 2), ("POST", 1)]
    assert page.total == 3
    # resurrect
    r = backend.update(WriteRequest("Patient", patient(id=s.id), id=s.id), stamp)
    assert r.created and r.resource.version == 4


def test_history_paging_and_since(backend: SqlBackend) -> None:
    ids = [backend.create(WriteRequest("Patient", patient()), stamp).resource for _ in range(5)]
    backend.create(WriteRequest("Observation", {"resourceType": "Observation", "status": "final",
                                                "code": {"text": "x"}}), stamp)
    seen: list[tuple[str, int]] = []
    cursor = None
    while True:
        page = backend.history(HistoryQuery("Patient", count=2, cursor=cursor))
        seen += [(h.resource.id, h.resource.version) for h in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted((s.id, 1) for s in ids)
    assert len(seen) == len(set(seen))
    assert backend.history(HistoryQuery(count=100)).total == 6
    since = backend.history(HistoryQuery("Patient", since_ms=ids[3].last_updated_ms, count=100))
    assert {h.resource.id for h in since.items} >= {ids[3].id, ids[4].id}
    assert all(h.resource.last_updated_ms >= ids[3].last_updated_ms for h in since.items)


def test_search_id_lastupdated_and_paging(backend: SqlBackend) -> None:
    made = [backend.create(WriteRequest("Patient", patient()), stamp).resource for _ in range(7)]
    backend.delete("Patient", made[0].id)
    page = backend.search(q([("_id", f"{made[0].id},{made[1].id},{made[2].id}")]))
    assert {s.id for s in page.items} == {made[1].id, made[2].id}
    assert page.total == 2
    pivot = made[3].last_updated_ms
    gt = backend.search(q([("_lastUpdated", "gt" + made[3].last_updated)]))
    assert {s.id for s in gt.items} == {m.id for m in made[1:] if m.last_updated_ms > pivot}
    walked: list[str] = []
    cursor = None
    while True:
        query = q([], count=2)
        query.cursor = cursor
        p = backend.search(query)
        walked += [s.id for s in p.items]
        cursor = p.next_cursor
        if cursor is None:
            break
    assert walked == [m.id for m in made[1:]]


def test_conditional_create_matches(backend: SqlBackend) -> None:
    a = backend.create(WriteRequest("Patient", patient()), stamp).resource
    again = backend.create(WriteRequest("Patient", patient(), if_none_exist=q([("_id", a.id)])), stamp)
    assert again.existing and again.resource.id == a.id
    backend.create(WriteRequest("Patient", patient()), stamp)
    with pytest.raises(MultipleMatches):
        backend.create(WriteRequest("Patient", patient(), if_none_exist=q([("_lastUpdated", "gt2000")])), stamp)


def test_transaction_all_or_nothing(backend: SqlBackend) -> None:
    with pytest.raises(RuntimeError), backend.transaction():
        backend.create(WriteRequest("Patient", patient(id="tx-a"), id="tx-a"), stamp)
        raise RuntimeError("abort")
    assert backend.read("Patient", "tx-a") is None
    with backend.transaction():
        backend.update(WriteRequest("Patient", patient(id="tx-b"), id="tx-b"), stamp)
        backend.update(WriteRequest("Patient", patient(id="tx-c"), id="tx-c"), stamp)
    assert backend.read("Patient", "tx-b") is not None and backend.read("Patient", "tx-c") is not None


def test_concurrent_conditional_creates_leave_one(backend: SqlBackend) -> None:
    # Server-assigned ids and a condition that the newly created resource itself satisfies: only a
    # lock around search-then-insert (not a unique key) keeps the racers from creating several.
    from fhir_server.model.instant import format_instant, now_ms

    start = format_instant(now_ms() - 1)
    n = 16
    barrier = threading.Barrier(n)

    def go(_: int) -> tuple[bool, str]:
        barrier.wait()
        out = backend.create(
            WriteRequest("Patient", patient(), if_none_exist=q([("_lastUpdated", "ge" + start)])), stamp
        )
        return out.created, out.resource.id

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(go, range(n)))
    assert sum(created for created, _ in results) == 1
    assert len({rid for _, rid in results}) == 1
    assert backend.search(q([])).total == 1


def test_concurrent_if_match_one_winner(backend: SqlBackend) -> None:
    s = backend.create(WriteRequest("Patient", patient()), stamp).resource
    n = 12
    barrier = threading.Barrier(n)

    def go(i: int) -> str:
        barrier.wait()
        try:
            backend.update(WriteRequest("Patient", patient(id=s.id, gender="male"), id=s.id, if_match=1), stamp)
            return "ok"
        except VersionConflict:
            return "412"

    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(go, range(n)))
    assert outcomes.count("ok") == 1 and outcomes.count("412") == n - 1


def test_concurrent_updates_lose_no_version(backend: SqlBackend) -> None:
    s = backend.create(WriteRequest("Patient", patient()), stamp).resource
    n, per = 8, 5
    barrier = threading.Barrier(n)

    def go(i: int) -> list[int]:
        barrier.wait()
        return [
            backend.update(WriteRequest("Patient", patient(id=s.id, birthDate=f"19{i}{j}"), id=s.id), stamp)
            .resource.version
            for j in range(per)
        ]

    with ThreadPoolExecutor(n) as pool:
        versions = sorted(v for vs in pool.map(go, range(n)) for v in vs)
    assert versions == list(range(2, 2 + n * per))
    hist = backend.history(HistoryQuery("Patient", s.id, count=1000))
    assert sorted(h.resource.version for h in hist.items) == list(range(1, 2 + n * per))
