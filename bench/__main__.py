"""`python -m bench [--only NAME,...] [--seconds S] [--connections C]` (what `make bench` runs)."""

from __future__ import annotations

import argparse
import sys

from bench.drive import DRIVERS, Settings
from bench.runner import GROUPS, LOAD_WORKLOADS, MICRO_PLUGINS, main, resolve


def _parser(defaults: Settings) -> argparse.ArgumentParser:
    names = ", ".join(list(LOAD_WORKLOADS) + list(MICRO_PLUGINS))
    groups = "; ".join(f"{g} = {','.join(ns)}" for g, ns in GROUPS.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load and micro workloads, each shown as a ratio to baselines of the same run.",
        epilog=f"workloads: {names}. groups: {groups}.",
    )
    parser.add_argument("--only", help="comma-separated workloads or groups (default: all)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=defaults.seconds,
        help="measured seconds per load workload (default $BENCH_SECONDS or 5)",
    )
    parser.add_argument(
        "--connections", type=int, default=defaults.connections, help="keep-alive connections (32)"
    )
    parser.add_argument("--warmup", type=float, default=defaults.warmup, help="unmeasured seconds first (1)")
    parser.add_argument(
        "--driver",
        choices=DRIVERS,
        default=defaults.driver,
        help="load generator: wrk when on PATH (auto), or force one ($BENCH_DRIVER)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the load workloads, keep each one's best"
    )
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    return parser


def cli(argv: list[str] | None = None) -> int:
    defaults = Settings.from_env()
    args = _parser(defaults).parse_args(argv)
    if args.list:
        for name, workload in LOAD_WORKLOADS.items():
            print(f"{name:10s} load   {workload.what}")
        for name, module in MICRO_PLUGINS.items():
            print(f"{name:10s} micro  {module}.run(report)")
        return 0
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    try:
        resolve(only)
    except ValueError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    if args.seconds <= 0 or args.connections < 1 or args.rounds < 1 or args.warmup < 0:
        print("python -m bench: --seconds, --connections and --rounds must be positive", file=sys.stderr)
        return 2
    settings = Settings(
        seconds=args.seconds, connections=args.connections, warmup=args.warmup, driver=args.driver
    )
    return main(settings, only, rounds=args.rounds)


if __name__ == "__main__":
    sys.exit(cli())
