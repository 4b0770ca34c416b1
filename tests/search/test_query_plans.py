"""The planner's queries are index lookups, not scans, on SQLite and PostgreSQL (EXPLAIN)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa

from fhir_server.interactions.common import stamp
from fhir_server.model.instant import now_ms
from fhir_server.search.extract import Indexer
from fhir_server.search.parse import parse_search
from fhir_server.storage.base import WriteRequest
from fhir_server.storage.sql.backend import R, SqlBackend
from fhir_server.storage.sql.schema import resource
from fhir_server.storage.sql.search_sql import Planner
from tests.storage.conftest import pg_database


def _observation(i: int) -> dict[str, object]:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory" if i % 2 else "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": f"{1000 + i % 50}-1"}]},
            "subject": {"reference": f"Patient/p{i % 40}"},
            "effectiveDateTime": f"20{10 + i % 10}-01-01T00:00:00Z",
            "valueQuantity": {"value": i % 500, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}


@pytest.fixture(params=["sqlite", "postgresql"])
def loaded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlBackend]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path}/plans.db"
        else:
            url = stack.enter_context(pg_database())
        backend = SqlBackend(url, indexer=Indexer("http://x/fhir"))
        stack.callback(backend.close)
        backend.start()
        with backend.transaction():
            for i in range(2000):
                backend.create(WriteRequest("Observation", _observation(i)), stamp)
        backend.analyze()
        yield backend


QUERIES = [
    [("patient", "p7"), ("code", "http://loinc.org|1007-1")],
    [("patient", "p7"), ("category", "laboratory"), ("date", "ge2015-01-01")],
    [("code", "1003-1")],
    # A code with letters: LOINC is case-insensitive, so the lookup is code IN (as sent, folded).
    [("code", "http://loinc.org|LP1003-1")],
    [("code", "LP1003-1")],
    [("patient", "p7"), ("code", "LP1007-1")],
    # Number intervals ([v, v] rows) are compared without arithmetic on the columns, so the value
    # bounds the lookup.  (The quantity lookup index holds no system: not covering on SQLite.)
    [("value-quantity", "lt3|http://unitsofmeasure.org|mg")],
    [("value-quantity", "7|http://unitsofmeasure.org|mg")],
    [("value-quantity", "eb3|http://unitsofmeasure.org|mg")],
]
NOT_COVERING = {"quantity-lt", "quantity-eq", "quantity-eb"}


def _plan(backend: SqlBackend, params: list[tuple[str, str]]) -> str:
    query = parse_search(["Observation"], params, default_count=20, max_count=100, base_url="http://x/fhir")
    where = [R.deleted.is_(False), R.res_type == "Observation"]
    where += [Planner(now_ms()).predicate(c, resource) for c in query.conditions]
    stmt = sa.select(R.pid).where(*where).order_by(R.pid).limit(21)
    sql = str(stmt.compile(dialect=backend.engine.dialect, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if backend.dialect.is_sqlite else "EXPLAIN "
    with backend.engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + sql).fetchall()
    return "\n".join(str(r[-1]) for r in rows)


@pytest.mark.parametrize("params", QUERIES, ids=["patient+code", "patient+category+date", "code",
                                                 "system|CODE", "CODE", "patient+CODE", "quantity-lt",
                                                 "quantity-eq", "quantity-eb"])
def test_searches_use_the_lookup_indexes(
    loaded: SqlBackend, params: list[tuple[str, str]], request: pytest.FixtureRequest
) -> None:
    plan = _plan(loaded, params)
    if loaded.dialect.is_sqlite:
        # Every index table is reached through its covering lookup index, never scanned.
        covering = not any(f"-{name}]" in request.node.name for name in NOT_COVERING)
        assert ("USING COVERING INDEX ix_idx_" if covering else "USING INDEX ix_idx_") in plan, plan
        assert not any(line.strip().startswith(("SCAN idx_", "SCAN resource")) and "INDEX" not in line
                       for line in plan.splitlines()), plan
    else:
        assert "ix_idx_" in plan, plan
        assert "Seq Scan on idx_" not in plan, plan


def test_postgresql_keeps_the_chosen_driver(loaded: SqlBackend) -> None:
    """On PostgreSQL the non-driving conditions stay per-candidate probes (SubPlans), so the
    condition the planner chose (here the patient's references) drives whatever the row estimates
    say; SQLite runs the query as written anyway."""
    if loaded.dialect.is_sqlite:
        pytest.skip("SQLite does not reorder an EXISTS")
    query = parse_search(["Observation"], [("patient", "p7"), ("category", "laboratory"), ("status", "final")],
                         default_count=20, max_count=100, base_url="http://x/fhir")
    planner = Planner(now_ms(), fence_probes=True)
    stmt = sa.select(R.pid).where(*loaded._where(query, planner)).order_by(R.pid).limit(21)
    sql = str(stmt.compile(dialect=loaded.engine.dialect, compile_kwargs={"literal_binds": True}))
    assert sql.count("OFFSET 0") == 2, sql
    with loaded.engine.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql).fetchall())
    assert plan.count("SubPlan") >= 2 and "ix_idx_reference_lookup" in plan, plan
    assert "Seq Scan" not in plan, plan
    # The fenced query finds what the plain one finds.
    with loaded.engine.connect() as conn:
        fenced = [r[0] for r in conn.exec_driver_sql(sql).fetchall()]
        plain_stmt = sa.select(R.pid).where(*loaded._where(query, Planner(now_ms()))).order_by(R.pid).limit(21)
        plain = [r[0] for r in conn.execute(plain_stmt).fetchall()]
    assert fenced == plain and fenced
