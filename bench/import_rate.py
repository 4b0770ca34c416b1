"""Import rate of the 100-patient Synthea set (one worker, full validation and indexing).

Three numbers from the same run and the same data:
- the baseline: parse + structural validation alone, in this process (what no importer can beat);
- `fhir-server load` of the tar.gz into a fresh database (a subprocess; its own CPU time is read
  from the kernel, so a busy machine shows as a lower share of a core, not as a slower importer);
- POSTed transaction Bundles against a real server process (one worker), with the server's CPU
  time read from /proc.
Rates are resources per second of wall time and per CPU-second of the importing process; the
ratio to the baseline says how much of the import is validation.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.rest import SetupError, Target, database_url
from bench.synthea import SHARED

TGZ = SHARED / "large-100-patients" / "synthea-r4-100-patients-bundles.tar.gz"


def _bundles() -> Iterator[tuple[str, bytes]]:
    with tarfile.open(TGZ) as t:
        members = sorted((m for m in t.getmembers() if m.name.endswith(".json")),
                         key=lambda m: (not ("hospital" in m.name or "practitioner" in m.name), m.name))
        for m in members:
            f = t.extractfile(m)
            if f is not None:
                yield m.name, f.read()


def _baseline(report: Callable[..., None]) -> float:
    from fhir_server.model import jsonio
    from fhir_server.model.validate import validate_resource

    count, started = 0, time.process_time()
    for _, raw in _bundles():
        bundle = jsonio.loads(raw)
        for e in bundle.get("entry", []) if bundle.get("resourceType") == "Bundle" else [{"resource": bundle}]:
            validate_resource(e["resource"])
            count += 1
    rate = count / (time.process_time() - started)
    report("baseline: parse + validate only (per CPU-second)", rate, "resources/s")
    return rate


def _cli_load(kind: str, url: str, baseline: float, report: Callable[..., None]) -> None:
    env = {**os.environ, "FHIR_DATABASE_URL": url}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fhir_server.cli", "load", str(TGZ)], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    total = next((line.split()[-1] for line in done.stdout.splitlines() if line.strip().startswith("total")), None)
    if done.returncode not in (0, 1) or total is None:
        raise RuntimeError(f"fhir-server load failed ({done.returncode}): {done.stderr[-2000:]}")
    n = int(total)
    report(f"{kind}: fhir-server load, wall", n / wall, "resources/s")
    report(f"{kind}: fhir-server load, per CPU-second", n / cpu, "resources/s", ratio_to=baseline)
    print(f"import_rate[{kind}]: fhir-server load stored {n} resources in {wall:.1f} s ({cpu:.1f} CPU-s)")


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _posted(kind: str, url: str, baseline: float, report: Callable[..., None]) -> None:
    from tests.server_process import ServerProcess

    with ServerProcess(url) as server, httpx.Client(base_url=server.base, timeout=300) as client:
        assert server.proc is not None
        count, cpu0, started = 0, _server_cpu(server.proc.pid), time.perf_counter()
        for name, raw in _bundles():
            if b'"transaction"' not in raw[:400]:
                continue  # the bare Group of the set is not a Bundle
            r = client.post("", content=raw, headers={"Content-Type": "application/fhir+json",
                                                      "Prefer": "return=minimal"})
            if r.status_code != 200:
                raise RuntimeError(f"{name}: {r.status_code} {r.text[:500]}")
            count += len(r.json().get("entry", []))
        wall = time.perf_counter() - started
        cpu = _server_cpu(server.proc.pid) - cpu0
    report(f"{kind}: POSTed transactions, wall", count / wall, "resources/s")
    report(f"{kind}: POSTed transactions, per server CPU-second", count / cpu, "resources/s", ratio_to=baseline)
    print(f"import_rate[{kind}]: {count} resources POSTed in {wall:.1f} s ({cpu:.1f} server CPU-s)")


def run(report: Callable[..., None]) -> None:
    if not TGZ.exists():
        print("import_rate: skipped, ../shared/data/synthea is absent")
        return
    baseline = _baseline(report)
    for kind in ("sqlite", "postgresql"):
        for step in (_cli_load, _posted):
            with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp, ExitStack() as stack:
                try:
                    url = stack.enter_context(database_url(Target(kind), Path(tmp)))
                except SetupError as exc:
                    print(f"import_rate: {kind} skipped ({exc})")
                    break
                step(kind, url, baseline, report)


if __name__ == "__main__":
    run(lambda name, value, unit, ratio_to=None: print(f"{name}: {value:,.1f} {unit}"))
