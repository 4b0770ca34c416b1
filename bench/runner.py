"""Run the selected workloads, derive the ratios, print them and write bench/results/latest.json.

Two registries: load workloads (a server process driven over loopback HTTP) and micro plugins
(modules with `run(report)`, see bench/micro.py). A workload that cannot run yet (our server not
written, a plugin not importable) is skipped with its reason; one that breaks is reported as failed
and the rest still run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import output
from bench.baselines import run_bare, run_cap, run_fastapi
from bench.data import REPO_ROOT, patient_bytes, patient_source
from bench.drive import Settings
from bench.loadgen import LoadError, LoadResult
from bench.rest import SetupError, Target, run_create, run_read, run_search, unavailable_reason
from bench.servers import ServerStartError

RESULTS_PATH = REPO_ROOT / "bench" / "results" / "latest.json"


@dataclass(frozen=True)
class LoadWorkload:
    name: str
    what: str
    run: Callable[[Settings], LoadResult]
    expect: tuple[int, ...]  # the statuses that count as success
    needs_our_server: bool = False


LOAD_WORKLOADS: dict[str, LoadWorkload] = {
    w.name: w
    for w in (
        LoadWorkload("cap", "generator ceiling: canned bytes from a raw asyncio server", run_cap, (200,)),
        LoadWorkload("bare", "bare ASGI app on uvicorn: GET Patient bytes", run_bare, (200,)),
        LoadWorkload("fastapi", "minimal FastAPI route on uvicorn: GET Patient bytes", run_fastapi, (200,)),
        LoadWorkload("read", "our server: GET /fhir/Patient/{id}", run_read, (200,), needs_our_server=True),
        LoadWorkload("read-auth", "our server, FHIR_AUTH=smart: GET /fhir/Patient/{id} with a bearer token",
                     partial(run_read, target=Target("sqlite", 1, auth=True)), (200,), needs_our_server=True),
        LoadWorkload("create", "our server: POST /fhir/Patient", run_create, (201,), needs_our_server=True),
        LoadWorkload("search", "our server: GET /fhir/Patient?_lastUpdated=gt..&_count=20 (200 Patients)",
                     run_search, (200,), needs_our_server=True),
        *(
            LoadWorkload(
                f"{kind}-{suffix}", f"our server ({label}): {what}",
                partial(fn, target=target), (status,), needs_our_server=True,
            )
            for suffix, label, target in (
                ("2w", "SQLite, FHIR_WORKERS=2", Target("sqlite", 2)),
                ("pg", "PostgreSQL, 1 worker", Target("postgresql", 1)),
                ("pg-2w", "PostgreSQL, FHIR_WORKERS=2", Target("postgresql", 2)),
            )
            for kind, what, fn, status in (
                ("read", "GET /fhir/Patient/{id}", run_read, 200),
                ("create", "POST /fhir/Patient", run_create, 201),
                ("search", "GET /fhir/Patient?_lastUpdated=gt..&_count=20", run_search, 200),
            )
        ),
    )
}

# name -> module; each module defines run(report). Order only affects the order of output.
MICRO_PLUGINS: dict[str, str] = {
    "model": "bench.model_micro",
    "xml_codec": "bench.xml_codec",
    "search_latency": "bench.search_latency",
    "import_rate": "bench.import_rate",
    "export_rate": "bench.export_rate",
    "profile_validation": "bench.profile_validation",
}

GROUPS: dict[str, list[str]] = {
    "baselines": ["cap", "bare", "fastapi"],
    "rest": ["read", "read-auth", "create", "search"],
    "scaling": [f"{k}{s}" for s in ("", "-2w", "-pg", "-pg-2w") for k in ("read", "create", "search")],
    "load": list(LOAD_WORKLOADS),
    "micro": list(MICRO_PLUGINS),
}

GOAL_READ_VS_FASTAPI = 0.7
GOAL_CREATE_RPS = 800.0
# Above this share of the generator's ceiling a target's number says more about the generator.
CAP_SHARE_LIMIT = 0.8
# A CPU-bound one-worker server below this share of a core was starved by other processes.
STARVED_CPU = 0.85


def all_names() -> list[str]:
    return list(LOAD_WORKLOADS) + list(MICRO_PLUGINS)


def resolve(only: list[str] | None) -> list[str]:
    if not only:
        return all_names()
    chosen: list[str] = []
    for name in only:
        names = GROUPS.get(name, [name])
        for n in names:
            if n not in LOAD_WORKLOADS and n not in MICRO_PLUGINS:
                known = ", ".join(all_names() + list(GROUPS))
                raise ValueError(f"unknown workload {n!r}; known: {known}")
            if n not in chosen:
                chosen.append(n)
    return [n for n in all_names() if n in chosen]


@dataclass
class Metric:
    plugin: str
    name: str
    value: float
    unit: str
    ratio_to: str | float | None = None
    ratio: float | None = None


@dataclass
class Run:
    settings: Settings
    rounds: int
    load: dict[str, list[LoadResult]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)

    def best(self, name: str) -> LoadResult | None:
        results = self.load.get(name)
        return max(results, key=lambda r: r.rps) if results else None

    def rps(self, name: str) -> float | None:
        best = self.best(name)
        return best.rps if best is not None and best.requests else None

    def per_cpu(self, name: str) -> float | None:
        best = self.best(name)
        return best.per_server_cpu if best is not None else None


def _run_load(run: Run, workload: LoadWorkload) -> None:
    if workload.name in run.skipped or workload.name in run.failed:
        return
    if workload.needs_our_server:
        reason = unavailable_reason()
        if reason is not None:
            run.skipped[workload.name] = reason
            output.progress(f"{workload.name}: skipped: {reason}")
            return
    try:
        result = workload.run(run.settings)
    except (ServerStartError, SetupError, LoadError, OSError, subprocess.SubprocessError) as exc:
        run.failed[workload.name] = f"{type(exc).__name__}: {exc}"
        output.progress(f"{workload.name}: FAILED: {exc}")
        return
    if not result.requests:
        run.failed[workload.name] = f"no response was counted ({result.driver}): errors {result.errors}"
        output.progress(f"{workload.name}: FAILED: {run.failed[workload.name]}")
        return
    run.load.setdefault(workload.name, []).append(result)
    output.progress(output.load_line(workload.name, result, workload.expect))


def _run_micro(run: Run, name: str) -> None:
    module_name = MICRO_PLUGINS[name]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a plugin still being written must not stop the run
        run.skipped[name] = f"{module_name} is not importable: {type(exc).__name__}: {exc}"
        output.progress(f"{name}: skipped: {run.skipped[name]}")
        return
    plugin_run = getattr(module, "run", None)
    if not callable(plugin_run):
        run.skipped[name] = f"{module_name} has no run(report)"
        output.progress(f"{name}: skipped: {run.skipped[name]}")
        return

    def report(metric: str, value: float, unit: str, ratio_to: str | float | None = None) -> None:
        run.metrics.append(Metric(name, metric, float(value), unit, ratio_to))
        output.progress(f"{name}: {metric} = {float(value):,.2f} {unit}")

    started = time.perf_counter()
    try:
        plugin_run(report)
    except Exception as exc:
        run.failed[name] = f"{type(exc).__name__}: {exc}"
        output.progress(
            f"{name}: FAILED after {time.perf_counter() - started:.1f} s:\n{traceback.format_exc()}"
        )


def _resolve_metric_ratios(metrics: list[Metric]) -> None:
    by_name = {m.name: m.value for m in metrics}
    for m in metrics:
        reference: float | None = None
        if isinstance(m.ratio_to, str):
            reference = by_name.get(m.ratio_to)
        elif isinstance(m.ratio_to, int | float):
            reference = float(m.ratio_to)
        if reference:
            m.ratio = m.value / reference


def _verdict(value: float | None, per_cpu: float | None, goal: float | None, starved: bool) -> str:
    if goal is None or value is None:
        return ""
    if value >= goal:
        return "meets goal"
    if starved and per_cpu is not None and per_cpu >= goal:
        return "inconclusive: server starved"
    return "BELOW GOAL"


def ratios(run: Run) -> list[dict[str, Any]]:
    """The numbers that matter, each relative to something measured in this same run.

    `value` compares throughput; `per_cpu` compares requests per server CPU-second, which stays
    meaningful when other processes on the shared machine starve one server more than another.
    """
    rows: list[dict[str, Any]] = []

    def starved(*names: str) -> bool:
        cpus = [best.server_cpu for n in names if (best := run.best(n)) is not None]
        return any(cpu is not None and cpu < STARVED_CPU for cpu in cpus)

    def ratio(name: str, num: str, den: str, goal: float | None = None, note: str = "") -> None:
        a, b = run.rps(num), run.rps(den)
        value = a / b if a is not None and b else None
        c, d = run.per_cpu(num), run.per_cpu(den)
        per_cpu = c / d if c is not None and d else None
        is_starved = value is not None and starved(num, den)
        if is_starved:
            note = "; ".join(filter(None, [note, "server starved: read per-CPU"]))
        rows.append(
            {
                "name": name,
                "value": value,
                "per_cpu": per_cpu,
                "unit": "x",
                "goal": goal,
                "verdict": _verdict(value, per_cpu, goal, is_starved),
                "note": note,
            }
        )

    ratio("read / minimal FastAPI", "read", "fastapi", GOAL_READ_VS_FASTAPI)
    ratio("read / bare ASGI", "read", "bare")
    ratio("minimal FastAPI / bare ASGI", "fastapi", "bare", note="ARCHITECTURE.md: 9,700/36,000 = 0.27")
    ratio("read with a bearer token / read without (FHIR_AUTH=smart vs off)", "read-auth", "read")
    # Scaling: two workers against one, and PostgreSQL against SQLite (the machine has 2 cores,
    # shared with the load generator, so 2 workers can at best approach 2x).
    for kind in ("read", "create", "search"):
        ratio(f"{kind}: 2 workers / 1 worker (SQLite)", f"{kind}-2w", kind)
        ratio(f"{kind}: PostgreSQL / SQLite (1 worker)", f"{kind}-pg", kind)
        ratio(f"{kind}: 2 workers / 1 worker (PostgreSQL)", f"{kind}-pg-2w", f"{kind}-pg")
    create, create_cpu = run.rps("create"), run.per_cpu("create")
    create_starved = create is not None and starved("create")
    rows.append(
        {
            "name": "create (absolute)",
            "value": create,
            "per_cpu": create_cpu,
            "unit": "req/s",
            "goal": GOAL_CREATE_RPS,
            "verdict": _verdict(create, create_cpu, GOAL_CREATE_RPS, create_starved),
            "note": "server starved: read per-CPU" if create_starved else "",
        }
    )
    cap = run.rps("cap")
    for target in ("bare", "fastapi", "read", "create"):
        value = run.rps(target)
        if cap and value is not None:
            share = value / cap
            rows.append(
                {
                    "name": f"{target} / generator ceiling",
                    "value": share,
                    "per_cpu": None,
                    "unit": "x",
                    "goal": None,
                    "verdict": "",
                    "note": "near the ceiling: a lower bound" if share > CAP_SHARE_LIMIT else "",
                }
            )
    return rows


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _environment(settings: Settings) -> dict[str, Any]:
    def has(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "uvloop": has("uvloop"),
        "httptools": has("httptools"),
        "driver": "wrk" if settings.uses_wrk() else "python",
        "git_commit": _git_commit(),
    }


def execute(settings: Settings, names: list[str], rounds: int = 1) -> Run:
    run = Run(settings=settings, rounds=rounds)
    loads = [LOAD_WORKLOADS[n] for n in names if n in LOAD_WORKLOADS]
    for _ in range(rounds):
        for workload in loads:
            _run_load(run, workload)
    for name in names:
        if name in MICRO_PLUGINS:
            _run_micro(run, name)
    _resolve_metric_ratios(run.metrics)
    return run


def to_json(run: Run, env: dict[str, Any], started: float, finished: float) -> dict[str, Any]:
    source, _ = patient_source()
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(finished - started, 1),
        "environment": {**env, "loadavg_at_end": list(os.getloadavg())},
        "settings": {
            "seconds": run.settings.seconds,
            "connections": run.settings.connections,
            "warmup": run.settings.warmup,
            "driver": run.settings.driver,
            "rounds": run.rounds,
        },
        "patient": {"source": source, "bytes": len(patient_bytes())},
        "load": {
            name: {
                "what": LOAD_WORKLOADS[name].what,
                "best": best.as_dict() if (best := run.best(name)) else None,
                "rounds": [r.as_dict() for r in results],
            }
            for name, results in run.load.items()
        },
        "ratios": ratios(run),
        "micro": [m.__dict__ for m in run.metrics],
        "skipped": run.skipped,
        "failed": run.failed,
    }


def main(
    settings: Settings, only: list[str] | None, rounds: int = 1, results_path: Path = RESULTS_PATH
) -> int:
    names = resolve(only)
    env = _environment(settings)
    started = time.time()
    output.header(settings, env, patient_source()[0], len(patient_bytes()), names)
    run = execute(settings, names, rounds)
    finished = time.time()
    output.summary(run, ratios(run), LOAD_WORKLOADS)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(to_json(run, env, started, finished), indent=2) + "\n")
    print(f"\nall numbers: {os.path.relpath(results_path)} ({finished - started:.0f} s)")
    return 1 if run.failed else 0
