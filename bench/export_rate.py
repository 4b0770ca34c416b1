"""Bulk $export of everything after loading the 100-patient Synthea set (39k resources).

One server process (one worker) on SQLite and on PostgreSQL: system-level kick-off, polling
until the manifest is ready, then every NDJSON file downloaded.  Reported: resources per second
for the job itself (kick-off to manifest) and including the downloads, and the server's peak RSS
(VmHWM from /proc) against its RSS before the export: flat memory shows as a small difference,
whatever the export's size.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.rest import SetupError, Target, database_url
from bench.synthea import SHARED, load


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _one(kind: str, report: Callable[..., None]) -> None:
    from fhir_server.search.extract import Indexer
    from fhir_server.storage.sql.backend import SqlBackend
    from tests.server_process import ServerProcess

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp, ExitStack() as stack:
        try:
            url = stack.enter_context(database_url(Target(kind), Path(tmp)))
        except SetupError as exc:
            print(f"export_rate: {kind} skipped ({exc})")
            return
        backend = SqlBackend(url, indexer=Indexer("http://127.0.0.1/fhir"))
        backend.start()
        loaded, _, _ = load(backend, "large")
        backend.close()
        with ServerProcess(url) as server, httpx.Client(timeout=300) as client:
            assert server.proc is not None
            pid = server.proc.pid
            before = _rss_kib(pid, "VmRSS")
            started = time.perf_counter()
            r = client.get(f"{server.base}/$export", headers={"Prefer": "respond-async"})
            if r.status_code != 202:
                raise RuntimeError(f"kick-off answered {r.status_code}: {r.text[:300]}")
            status_url = r.headers["Content-Location"]
            while (s := client.get(status_url)).status_code == 202:
                time.sleep(0.05)
            if s.status_code != 200:
                raise RuntimeError(f"export failed: {s.status_code} {s.text[:300]}")
            job_done = time.perf_counter() - started
            exported = 0
            for out in s.json()["output"]:
                with client.stream("GET", out["url"]) as f:
                    lines = sum(chunk.count(b"\n") for chunk in f.iter_bytes())
                if lines != out["count"]:
                    raise RuntimeError(f"{out['url']}: {lines} lines, manifest says {out['count']}")
                exported += lines
            total = time.perf_counter() - started
            peak = _rss_kib(pid, "VmHWM")
        report(f"{kind}: export job, all {exported} resources", exported / job_done, "resources/s")
        report(f"{kind}: export job + downloading every file", exported / total, "resources/s")
        report(f"{kind}: server peak RSS over RSS before the export", (peak - before) / 1024, "MiB")
        print(f"export_rate[{kind}]: {exported} of {loaded} loaded resources exported in {job_done:.1f} s "
              f"(+downloads: {total:.1f} s); server RSS {before // 1024} MiB before, peak {peak // 1024} MiB")


def run(report: Callable[..., None]) -> None:
    if not (SHARED / "large-100-patients").exists():
        print("export_rate: skipped, ../shared/data/synthea is absent")
        return
    for kind in ("sqlite", "postgresql"):
        _one(kind, report)


if __name__ == "__main__":
    run(lambda name, value, unit, ratio_to=None: print(f"{name}: {value:,.1f} {unit}"))
