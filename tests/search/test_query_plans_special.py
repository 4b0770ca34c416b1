"""Location near, the reference$token and three-part composites and the Bundle chains into the
first entry are index lookups too, on SQLite and PostgreSQL (EXPLAIN)."""

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

CHROMOSOME = "http://terminology.hl7.org/CodeSystem/chromosome-human"


def _resources(i: int) -> list[dict[str, object]]:
    return [
        {"resourceType": "Location", "position": {"latitude": (i * 7) % 170 - 85, "longitude": (i * 13) % 360 - 180}},
        {"resourceType": "MolecularSequence", "type": "dna", "coordinateSystem": i % 2,
         "referenceSeq": {"chromosome": {"coding": [{"system": CHROMOSOME, "code": str(1 + i % 22)}]},
                          "windowStart": i, "windowEnd": i + 100},
         "variant": [{"start": i + 10, "end": i + 11}]},
        {"resourceType": "DocumentReference", "status": "current",
         "content": [{"attachment": {"url": f"http://example.org/{i}"}}],
         "relatesTo": [{"code": "replaces", "target": {"reference": f"DocumentReference/d{i}"}}]},
        {"resourceType": "Bundle", "type": "document", "timestamp": "2020-01-01T00:00:00Z",
         "identifier": {"system": "urn:test", "value": str(i)},
         "entry": [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                    "resource": {"resourceType": "Composition", "status": "final", "type": {"text": "note"},
                                 "date": "2020-01-01", "title": "t", "author": [{"reference": "Practitioner/a"}],
                                 "subject": {"reference": f"Patient/p{i}"}}}]},
    ]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlBackend]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            tmp: Path = tmp_path_factory.mktemp("plans")
            url = f"sqlite:///{tmp}/plans.db"
        else:
            url = stack.enter_context(pg_database())
        backend = SqlBackend(url, indexer=Indexer("http://x/fhir"))
        stack.callback(backend.close)
        backend.start()
        with backend.transaction():
            for i in range(1500):
                for res in _resources(i):
                    backend.create(WriteRequest(str(res["resourceType"]), res), stamp)
        backend.analyze()
        yield backend


def _plan(backend: SqlBackend, rtype: str, params: list[tuple[str, str]]) -> str:
    query = parse_search([rtype], params, default_count=20, max_count=100, base_url="http://x/fhir")
    where = [R.deleted.is_(False), R.res_type == rtype]
    where += [Planner(now_ms()).predicate(c, resource) for c in query.conditions]
    stmt = sa.select(R.pid).where(*where).order_by(R.pid).limit(21)
    sql = str(stmt.compile(dialect=backend.engine.dialect, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if backend.dialect.is_sqlite else "EXPLAIN "
    with backend.engine.connect() as conn:
        rows = conn.exec_driver_sql(prefix + sql).fetchall()
    return "\n".join(str(r[-1]) for r in rows)


# (type, parameters, lookup index, whether it covers the test on SQLite).  The composite lookup
# index holds the codes but not the systems or ranges: a seek, then the rows it names (as for
# every composite parameter).
CASES = [
    ("Location", [("near", "40|-100|50|km")], "ix_idx_geo_lookup", True),
    ("Location", [("near", "-17.8|179.9|300|km")], "ix_idx_geo_lookup", True),  # two longitude ranges
    ("MolecularSequence", [("chromosome-variant-coordinate", "7$ge100$le200")], "ix_idx_composite_lookup", False),
    ("DocumentReference", [("relationship", "DocumentReference/d17$replaces")], "ix_idx_composite_lookup", False),
    ("Bundle", [("composition.subject", "Patient/p17")], "ix_idx_reference_lookup", True),
]


@pytest.mark.parametrize("rtype,params,index,covering", CASES, ids=["near", "near-antimeridian", "coordinates",
                                                                     "relationship", "composition.subject"])
def test_special_searches_use_the_lookup_indexes(
    loaded: SqlBackend, rtype: str, params: list[tuple[str, str]], index: str, covering: bool
) -> None:
    plan = _plan(loaded, rtype, params)
    if loaded.dialect.is_sqlite:
        assert f"USING {'COVERING ' if covering else ''}INDEX {index}" in plan, plan
        assert not any(line.strip().startswith(("SCAN idx_", "SCAN resource")) and "INDEX" not in line
                       for line in plan.splitlines()), plan
    else:
        assert index in plan, plan
        assert "Seq Scan on idx_" not in plan, plan
