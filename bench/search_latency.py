"""Search latency after loading the 100-patient Synthea set: p50/p95 per query, SQLite and PostgreSQL.

Each query runs sequentially on one keep-alive connection against a real server process (one
worker), so the numbers are per-request latencies, not throughput.  The patient, code and family
name come from the loaded data.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.rest import SetupError, Target, database_url
from bench.synthea import SHARED, load, sample_values

ROUNDS = 40

QUERIES = {
    "Patient?_id": "Patient?_id={patient}",
    "Patient?family+gender": "Patient?family={family}&gender=male,female",
    "Patient?name": "Patient?name={family}",
    "Observation?patient+category": "Observation?patient={patient}&category=laboratory",
    "Observation?patient+code": "Observation?patient={patient}&code=http://loinc.org|{code}",
    "Observation?patient+category+date": "Observation?patient={patient}&category=vital-signs&date=ge2015-01-01T00:00:00Z",
    "Observation?patient+category+status": "Observation?patient={patient}&category=laboratory&status=final,amended",
    "Condition?patient": "Condition?patient={patient}",
    "Encounter?patient+date": "Encounter?patient={patient}&date=ge2010-01-01",
    "MedicationRequest?patient+intent+_include": "MedicationRequest?patient={patient}&intent=order&_include=MedicationRequest:medication",
    "Observation?code&_summary=count": "Observation?code=http://loinc.org|{code}&_summary=count",
    "chained Observation?subject:Patient.name": "Observation?subject:Patient.name={family}&_count=20",
    "Patient?_id&_revinclude=Encounter:patient": "Patient?_id={patient}&_revinclude=Encounter:patient",
}


def _one(kind: str, report: Callable[..., None]) -> None:
    from fhir_server.search.extract import Indexer
    from fhir_server.storage.sql.backend import SqlBackend
    from tests.server_process import ServerProcess

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp, ExitStack() as stack:
        try:
            url = stack.enter_context(database_url(Target(kind), Path(tmp)))
        except SetupError as exc:
            print(f"search_latency: {kind} skipped ({exc})")
            return
        backend = SqlBackend(url, indexer=Indexer("http://127.0.0.1/fhir"))
        backend.start()
        loaded, seconds, skipped = load(backend, "large")
        values = sample_values(backend)
        backend.close()
        report(f"{kind}: load 100-patient set (batched, validated, indexed)", loaded / seconds, "resources/s")
        print(f"search_latency[{kind}]: loaded {loaded} resources in {seconds:.1f} s ({skipped} invalid skipped)")
        with ServerProcess(url) as server, httpx.Client(base_url=server.base + "/", timeout=60) as client:
            for name, template in QUERIES.items():
                path = template.format(**values)
                first = client.get(path)
                if first.status_code != 200:
                    raise RuntimeError(f"{path} answered {first.status_code}: {first.text[:300]}")
                times = []
                for _ in range(ROUNDS):
                    t = time.perf_counter()
                    r = client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                times.sort()
                total = first.json().get("total")
                report(f"{kind}: {name} p50 (total={total})", statistics.median(times), "ms")
                report(f"{kind}: {name} p95", times[int(len(times) * 0.95) - 1], "ms")


def run(report: Callable[..., None]) -> None:
    if not (SHARED / "large-100-patients").exists():
        print("search_latency: skipped, ../shared/data/synthea is absent")
        return
    for kind in ("sqlite", "postgresql"):
        _one(kind, report)


if __name__ == "__main__":
    run(lambda name, value, unit, ratio_to=None: print(f"{name}: {value:,.1f} {unit}"))
