"""What `python -m bench` prints: a progress line per workload, then the tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.drive import Settings
from bench.loadgen import LoadResult

if TYPE_CHECKING:
    from bench.runner import LoadWorkload, Run


def progress(line: str) -> None:
    print(f"  .. {line}", flush=True)


def _ok_share(result: LoadResult, expect: tuple[int, ...]) -> str:
    if not result.requests:
        return "-"
    return f"{100.0 * result.count(*expect) / result.requests:.1f}%"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _problems(result: LoadResult, expect: tuple[int, ...]) -> str:
    others = {code: n for code, n in result.statuses.items() if int(code) not in expect}
    parts = [f"{code}x{n}" for code, n in others.items()]
    parts += [f"{kind}x{n}" for kind, n in result.errors.items() if kind != "reconnects"]
    return " ".join(parts)


def load_line(name: str, result: LoadResult, expect: tuple[int, ...]) -> str:
    lat = result.latency_ms
    return (
        f"{name}: {result.rps:,.0f} req/s, p50 {lat.get('p50', 0):.2f} ms, p99 {lat.get('p99', 0):.2f} ms, "
        f"ok {_ok_share(result, expect)}, generator cpu {_cpu(result.client_cpu)}, "
        f"server cpu {_cpu(result.server_cpu)} ({result.driver}) {_problems(result, expect)}"
    ).rstrip()


def header(settings: Settings, env: dict[str, Any], source: str, size: int, names: list[str]) -> None:
    driver = "wrk (on PATH)" if settings.uses_wrk() else "pure-Python generator (wrk not used)"
    print(
        f"fhir-server bench: {settings.connections} connections, {settings.seconds:g} s per load workload "
        f"(+{settings.warmup:g} s warm-up), driver {driver}\n"
        f"patient: {source} ({size:,} bytes); {env['cpus']} cpus, "
        f"load average {env['loadavg_at_start'][0]:.2f}; "
        f"uvloop {'yes' if env['uvloop'] else 'no'}, httptools {'yes' if env['httptools'] else 'no'}\n"
        f"workloads: {', '.join(names)}",
        flush=True,
    )
    if env["loadavg_at_start"][0] > 0.5:
        print(
            "the machine is busy before we start: throughput ratios may be skewed; the per-CPU column "
            "(requests per server CPU-second) is the steadier comparison",
            flush=True,
        )


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}/s" if unit == "req/s" else f"{value:.2f}"


def summary(run: Run, ratio_rows: list[dict[str, Any]], workloads: dict[str, LoadWorkload]) -> None:
    if run.load:
        rows = [
            ["workload", "req/s", "req/cpu-s", "p50 ms", "p95 ms", "p99 ms", "ok", "gen cpu", "srv cpu"]
            + ["driver", "other"]
        ]
        for name, workload in workloads.items():
            best = run.best(name)
            if best is None:
                continue
            lat = best.latency_ms
            rows.append(
                [
                    name,
                    f"{best.rps:,.0f}",
                    "-" if best.per_server_cpu is None else f"{best.per_server_cpu:,.0f}",
                    *(f"{lat[q]:.2f}" if q in lat else "-" for q in ("p50", "p95", "p99")),
                    _ok_share(best, workload.expect),
                    _cpu(best.client_cpu),
                    _cpu(best.server_cpu),
                    best.driver,
                    _problems(best, workload.expect),
                ]
            )
        best_of = f" (best of {run.rounds} rounds)" if run.rounds > 1 else ""
        print(f"\nload workloads{best_of}:")
        print(_table(rows, right={1, 2, 3, 4, 5, 6, 7, 8}))

        rows = [["ratio", "by req/s", "by server CPU", "goal", "verdict", "note"]]
        for r in ratio_rows:
            if r["value"] is None:
                continue  # one side was not run (see --only) or failed
            goal = r["goal"]
            goal_text = (
                "" if goal is None else (f">= {goal:,.0f}/s" if r["unit"] == "req/s" else f">= {goal:.2f}")
            )
            if r["per_cpu"] is None:
                per_cpu = ""
            elif r["unit"] == "req/s":
                per_cpu = f"{r['per_cpu']:,.0f}/cpu-s"
            else:
                per_cpu = _fmt(r["per_cpu"], r["unit"])
            rows.append([r["name"], _fmt(r["value"], r["unit"]), per_cpu, goal_text, r["verdict"], r["note"]])
        if len(rows) > 1:
            print("\nratios (same run):")
            print(_table(rows, right={1, 2}))
        cap = run.rps("cap")
        bare = run.rps("bare")
        cap_result = run.best("cap")
        if cap and cap_result is not None and cap_result.client_cpu:
            # The generator's rate per core of its own is steadier than its raw ceiling on a busy machine.
            per_core = cap / cap_result.client_cpu
            line = (
                f"\ngenerator ceiling ({cap_result.driver}): {cap:,.0f} req/s, "
                f"{per_core:,.0f} per generator CPU-second"
            )
            bare_result = run.best("bare")
            if bare_result is not None and bare_result.per_server_cpu:
                share = bare_result.per_server_cpu / per_core
                line += f"; a fully busy bare ASGI worker needs {share:.2f} of its core"
            print(line)
        if cap and bare and bare / cap > 0.8:
            print(
                f"\nNOTE: the generator's ceiling ({cap:,.0f} req/s) is within 20% of bare ASGI "
                f"({bare:,.0f} req/s): "
                "bare ASGI's number and ratios to it are lower bounds. Compare ratios between targets well "
                "below the ceiling (FastAPI, our server)."
            )

    if run.metrics:
        rows = [["micro", "metric", "value", "ratio", "to"]]
        for m in run.metrics:
            ratio = "" if m.ratio is None else f"{m.ratio:.3g}x"
            to = "" if m.ratio_to is None else str(m.ratio_to)
            if m.ratio_to is not None and m.ratio is None:
                to += " (not measured)"
            rows.append([m.plugin, m.name, f"{m.value:,.2f} {m.unit}", ratio, to])
        print("\nmicro workloads (median per call):")
        print(_table(rows, right={2, 3}))

    for title, entries in (("skipped", run.skipped), ("FAILED", run.failed)):
        if entries:
            print(f"\n{title}:")
            for name, reason in entries.items():
                print(f"  {name}: {reason}")
